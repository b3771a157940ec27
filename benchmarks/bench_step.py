"""Time one lin|lin training step against the bare matrix products of the same shapes.

A training step of the closed-form (``exact``) objective needs five products
of the step's shapes: two forward (encoder ``x W^T``, decoder ``m Phi^T``) and
three backward (the gradient through the decoder, and the dictionary and
encoder weight gradients; the data needs no gradient). Everything
else (rates, KL, variance penalty, clipping, Adamax) is elementwise; this
script shows how much it adds.

    python benchmarks/bench_step.py [--K 512] [--batch 1000] [--device cpu]

Prints the median of ``--repeats`` timings (after warm-up) for the bare
products and for full optimiser steps of each family and estimator, and each
step's ratio to the bare products of its own shapes (the Gaussian families'
encoder has 2K outputs).
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


def bare_matmuls(B: int, D: int, K: int, device: torch.device, n_params: int = 1):
    """The five products; the encoder has ``n_params * K`` outputs (2K for a
    Gaussian family: a mean and a log-scale per unit)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g).to(device)
    W = torch.randn(n_params * K, D, generator=g).to(device)
    Phi = torch.randn(D, K, generator=g).to(device)

    def run():
        e = x @ W.T  # encoder, (B, nK)
        u = e[:, :K]
        r = u @ Phi.T  # decoder, (B, D)
        gu = r @ Phi  # backward through the decoder, (B, K)
        gPhi = r.T @ u  # dictionary gradient, (D, K)
        gW = e.T @ x  # encoder gradient, (nK, D)
        return gPhi, gW

    return run


def train_step(family: str, estimator: str, B: int, D: int, K: int, device: torch.device, compile: bool = False,
               cuda_graph: bool = False):
    x = torch.randn(20 * B, D, generator=torch.Generator().manual_seed(1))
    model = LinearVAE(ModelConfig(family=family, K=K, input_dim=D, n_exp=None))
    trainer = Trainer(model, TrainConfig(epochs=1, warmup_epochs=0, batch_size=B, estimator=estimator,
                                         device=str(device), compile=compile, cuda_graph=cuda_graph), x)
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
    p.add_argument("--cuda-graph", action="store_true", help="also time the exact steps replayed as CUDA graphs")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.cuda_graph and device.type != "cuda":
        p.error("--cuda-graph needs --device cuda")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"shapes: batch {args.batch}, input {args.dim}, K {args.K}")
    cases = [("poisson", "exact"), ("gaussian_relu", "exact")]
    if args.mc:
        cases += [("poisson", "mc"), ("gaussian_relu", "mc")]
    bare = {1: "bare matmuls (5 products)", 2: "bare matmuls, encoder 2K outputs"}
    fns = {bare[1]: bare_matmuls(args.batch, args.dim, args.K, device)}
    fns[bare[2]] = bare_matmuls(args.batch, args.dim, args.K, device, n_params=2)
    reference = {bare[1]: bare[1], bare[2]: bare[2]}
    for family, estimator in cases:
        step, model = train_step(family, estimator, args.batch, args.dim, args.K, device)
        extra = f" (n_exp={model.family.n_exp})" if estimator == "mc" and family == "poisson" else ""
        name = f"train step {family} {estimator}{extra}"
        fns[name], reference[name] = step, bare[model.family.n_params]
    if args.cuda_graph:
        for family in ("poisson", "gaussian_relu"):
            step, model = train_step(family, "exact", args.batch, args.dim, args.K, device, cuda_graph=True)
            name = f"train step {family} exact, CUDA graph"
            fns[name], reference[name] = step, bare[model.family.n_params]
    if args.compile:
        name = "train step poisson exact, compiled kernels"
        fns[name] = train_step("poisson", "exact", args.batch, args.dim, args.K, device, compile=True)[0]
        reference[name] = bare[1]
    # Interleave: every round times every case, so a change in machine load
    # during the run hits all of them alike; report medians over rounds, and the
    # median over rounds of each step's ratio to the bare products of its own
    # shapes timed in the same round (robust to slow and fast phases of a shared machine).
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        median_time(fn, device, 1, warmup=5)
    for _ in range(args.rounds):
        for name, fn in fns.items():
            samples[name].append(median_time(fn, device, args.repeats, warmup=1))
    print(f"{'case':44s} {'median':>10s}   {'ratio to its bare products (median of rounds)':s}")
    for name, ts in samples.items():
        ratios = [a / b for a, b in zip(ts, samples[reference[name]])]
        print(f"{name:44s} {statistics.median(ts) * 1e3:8.2f} ms   {statistics.median(ratios):.2f}x "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")
    # The products' rate says how loaded a shared host was during the run: the
    # elementwise passes slow down more than the products when it is.
    flops = 2 * args.batch * args.dim * args.K * (2 + 3)  # five products, encoder K outputs
    print(f"bare products ran at {flops / statistics.median(samples[bare[1]]) / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
