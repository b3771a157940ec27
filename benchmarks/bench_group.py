"""Vectorised group training against the same models trained one after another.

Times one epoch of a stacked group of ``--models`` (beta) variants of one
(family, K), and the same models trained alone one after another, on the same
data in the same process. Then, from measured step times of 8-model groups at
every K of the paper's grid, projects the cost of the ``paper`` preset (128
models, 3000 epochs + 5 warm-up, 107,520 training patches, batch 1000) on this
hardware, beside the authors' ~320 GPU-hours.

    python benchmarks/bench_group.py [--device cpu|cuda] [--Ks 64 512] [--patches 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from poissonvae.config import ModelConfig, TrainConfig
from poissonvae.models import LinearVAE
from poissonvae.sweep.grid import PAPER_BETAS, PAPER_KS
from poissonvae.training import Trainer

PAPER_PATCHES, PAPER_EPOCHS, PAPER_BATCH, PAPER_MODELS = 107_520, 3005, 1000, 128


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


CUDA_GRAPH = False  # --cuda-graph: every trainer replays its exact steps as a CUDA graph


def _trainer(family: str, K: int, betas: list[float], x: torch.Tensor, device, batch: int, epochs: int) -> Trainer:
    model = LinearVAE(ModelConfig(family=family, K=K), seeds=list(range(len(betas))))
    return Trainer(model, TrainConfig(epochs=epochs, warmup_epochs=0, batch_size=batch, device=str(device),
                                      cuda_graph=CUDA_GRAPH), x, betas=betas)


def group_vs_alone(family: str, K: int, betas: list[float], x: torch.Tensor, device, batch: int,
                   rounds: int) -> tuple[float, float, float]:
    """Median epoch time of the stacked group, of the same models one after another,
    and the median over rounds of their ratio. Each round times one group epoch
    and then one epoch of every model alone, so that a drift of the machine's speed
    (a shared host) hits both sides of a round alike."""
    group = _trainer(family, K, betas, x, device, batch, rounds + 1)
    alone = [_trainer(family, K, [b], x, device, batch, rounds + 1) for b in betas]
    for trainer in (group, *alone):
        trainer.train_epoch()  # warm-up (allocations, kernels)
    t_group, t_alone = [], []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        group.train_epoch()
        _sync(device)
        t1 = time.perf_counter()
        for trainer in alone:
            trainer.train_epoch()
        _sync(device)
        t_group.append(t1 - t0)
        t_alone.append(time.perf_counter() - t1)
    ratio = statistics.median(a / g for a, g in zip(t_alone, t_group))
    return statistics.median(t_group), statistics.median(t_alone), ratio


def step_time(family: str, K: int, n_models: int, x: torch.Tensor, device, steps: int = 5) -> float:
    model = LinearVAE(ModelConfig(family=family, K=K), seeds=list(range(n_models)))
    trainer = Trainer(model, TrainConfig(epochs=1, warmup_epochs=0, device=str(device), cuda_graph=CUDA_GRAPH), x,
                      betas=PAPER_BETAS[:n_models])
    batch = trainer.train[:PAPER_BATCH]
    for _ in range(2):
        trainer.train_step(batch)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--Ks", nargs="+", type=int, default=[64, 512])
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--patches", type=int, default=20_000, help="training patches per epoch (synthetic)")
    p.add_argument("--batch", type=int, default=PAPER_BATCH, help="batch size (paper: 1000; quick preset: 250)")
    p.add_argument("--families", nargs="+", default=["poisson", "gaussian_relu"])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (group epoch, then each model's)")
    p.add_argument("--no-projection", action="store_true")
    p.add_argument("--cuda-graph", action="store_true", help="replay exact steps as CUDA graphs (GPU only)")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.cuda_graph and device.type != "cuda":
        p.error("--cuda-graph needs --device cuda")
    global CUDA_GRAPH
    CUDA_GRAPH = args.cuda_graph
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"device: {device} ({name}), torch {torch.__version__}, CPU threads {torch.get_num_threads()}"
          + (", CUDA graphs" if CUDA_GRAPH else ""))
    x = torch.randn(args.patches, 256, generator=torch.Generator().manual_seed(0))
    betas = PAPER_BETAS[: args.models]
    print(f"\n{args.models} models x one epoch of {args.patches} patches (batch {args.batch}), "
          f"{args.rounds} interleaved rounds")
    print(f"{'family':14s} {'K':>5s} {'group s':>9s} {'one-by-one s':>13s} {'speed-up (median of rounds)':>28s}")
    for family in args.families:
        for K in args.Ks:
            group, alone, ratio = group_vs_alone(family, K, betas, x, device, args.batch, args.rounds)
            print(f"{family:14s} {K:5d} {group:9.2f} {alone:13.2f} {ratio:8.2f}x")
    if args.no_projection:
        return
    print(f"\nprojected cost of the paper preset ({PAPER_MODELS} models, {PAPER_EPOCHS} epochs, "
          f"{PAPER_PATCHES} patches) as 16 groups of 8 on this device:")
    steps_per_epoch = PAPER_PATCHES // PAPER_BATCH
    total = 0.0
    for family in ("poisson", "gaussian_relu"):
        for K in PAPER_KS:
            t = step_time(family, K, 8, x, device)
            hours = t * steps_per_epoch * PAPER_EPOCHS / 3600
            total += hours
            print(f"  {family:14s} K={K:5d}: {t * 1e3:8.1f} ms/step -> {hours:8.1f} h for its 8 models")
    print(f"  total: {total:.1f} device-hours on this {device.type} (authors: ~320 GPU-hours on RTX 6000 Ada, "
          f"one model per job)")


if __name__ == "__main__":
    main()
