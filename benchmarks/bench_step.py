"""Time one lin|lin training step against the bare matrix products of the same shapes.

A training step of the closed-form (``exact``) objective needs five products
of the step's shapes: two forward (encoder ``x W^T``, decoder ``m Phi^T``) and
three backward (the gradient through the decoder, and the dictionary and
encoder weight gradients; the data needs no gradient). Everything
else (rates, KL, variance penalty, clipping, Adamax) is elementwise; this
script shows how much it adds.

    python benchmarks/bench_step.py [--K 512] [--batch 1000] [--device cpu]

Prints the median of ``--repeats`` timings (after warm-up) for the bare
products and for full optimiser steps of each family and estimator.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from poissonvae.config import ModelConfig, TrainConfig
from poissonvae.models import LinearVAE
from poissonvae.training import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device: torch.device, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bare_matmuls(B: int, D: int, K: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g).to(device)
    W = torch.randn(K, D, generator=g).to(device)
    Phi = torch.randn(D, K, generator=g).to(device)

    def run():
        u = x @ W.T  # encoder, (B, K)
        r = u @ Phi.T  # decoder, (B, D)
        gu = r @ Phi  # backward through the decoder, (B, K)
        gPhi = r.T @ u  # dictionary gradient, (D, K)
        gW = gu.T @ x  # encoder gradient, (K, D)
        return gPhi, gW

    return run


def train_step(family: str, estimator: str, B: int, D: int, K: int, device: torch.device, compile: bool = False):
    x = torch.randn(20 * B, D, generator=torch.Generator().manual_seed(1))
    model = LinearVAE(ModelConfig(family=family, K=K, input_dim=D, n_exp=None))
    trainer = Trainer(model, TrainConfig(epochs=1, warmup_epochs=0, batch_size=B, estimator=estimator,
                                         device=str(device), compile=compile), x)
    trainer._set_n_exp()
    batch = trainer.train[:B]
    return lambda: trainer.train_step(batch), model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--K", type=int, default=512)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15, help="alternating rounds; each times every case")
    p.add_argument("--repeats", type=int, default=5, help="calls per case per round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mc", action="store_true", help="also time the Monte Carlo (relaxed-sample) estimator")
    p.add_argument("--compile", action="store_true", help="also time the P-VAE step with train.compile "
                   "(torch.compile'd elementwise kernels)")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"shapes: batch {args.batch}, input {args.dim}, K {args.K}")
    cases = [("poisson", "exact"), ("gaussian_relu", "exact")]
    if args.mc:
        cases += [("poisson", "mc"), ("gaussian_relu", "mc")]
    fns = {"bare matmuls (5 products)": bare_matmuls(args.batch, args.dim, args.K, device)}
    for family, estimator in cases:
        step, model = train_step(family, estimator, args.batch, args.dim, args.K, device)
        extra = f" (n_exp={model.family.n_exp})" if estimator == "mc" and family == "poisson" else ""
        fns[f"train step {family} {estimator}{extra}"] = step
    if args.compile:
        fns["train step poisson exact, compiled kernels"] = train_step("poisson", "exact", args.batch, args.dim,
                                                                       args.K, device, compile=True)[0]
    # Interleave: every round times every case, so a change in machine load
    # during the run hits all of them alike; report medians over rounds.
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        median_time(fn, device, 1, warmup=5)
    for _ in range(args.rounds):
        for name, fn in fns.items():
            samples[name].append(median_time(fn, device, args.repeats, warmup=1))
    base = statistics.median(samples["bare matmuls (5 products)"])
    for name, ts in samples.items():
        t = statistics.median(ts)
        print(f"{name:44s} {t * 1e3:8.2f} ms   {t / base:.2f}x")


if __name__ == "__main__":
    main()
