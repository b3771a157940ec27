"""Page faults and step time with and without ``poissonvae.memory.retain_freed_memory``.

Each setting runs in its own process (malloc settings are process-wide and
cannot be undone), alternating for ``--rounds`` rounds; each process trains
``--steps`` steps of each case after two warm-up steps and reports minor page
faults per step (``resource.getrusage``) and the median step time.

    PYTHONPATH=src python benchmarks/bench_memory.py [--rounds 3] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CASES = [("poisson", 512, 1), ("gaussian_relu", 512, 1), ("poisson", 512, 8), ("gaussian_relu", 512, 8)]


def child(steps: int) -> None:
    import torch

    from poissonvae.config import ModelConfig, TrainConfig
    from poissonvae.memory import retain_freed_memory
    from poissonvae.models import LinearVAE
    from poissonvae.training import Trainer

    x = torch.randn(4000, 256, generator=torch.Generator().manual_seed(0))
    out = {"retained": retain_freed_memory()}
    for family, K, M in CASES:
        trainer = Trainer(LinearVAE(ModelConfig(family=family, K=K), seeds=list(range(M))),
                          TrainConfig(epochs=2, warmup_epochs=0), x, betas=[1.0] * M)
        batch = trainer.train[:1000]
        for _ in range(2):
            trainer.train_step(batch)
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.train_step(batch)
            times.append(time.perf_counter() - t0)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
        out[f"{family} K={K} M={M}"] = (faults, statistics.median(times))
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.steps)
        return
    results: dict[str, list[dict]] = {"default malloc": [], "retained": []}
    for _ in range(args.rounds):
        for label, flag in (("default malloc", "0"), ("retained", "1")):
            env = dict(os.environ, POISSONVAE_RETAIN_MEMORY=flag)
            run = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)], env=env,
                                 capture_output=True, text=True, check=True)
            results[label].append(json.loads(run.stdout.strip().splitlines()[-1]))
    print(f"{args.rounds} alternating rounds of one process per setting; {args.steps} steps each, batch 1000")
    print(f"{'case':28s} {'faults/step':>12s} {'retained':>9s} {'step ms':>9s} {'retained':>9s}")
    for family, K, M in CASES:
        key = f"{family} K={K} M={M}"
        f0 = statistics.median(r[key][0] for r in results["default malloc"])
        f1 = statistics.median(r[key][0] for r in results["retained"])
        t0 = statistics.median(r[key][1] for r in results["default malloc"]) * 1e3
        t1 = statistics.median(r[key][1] for r in results["retained"]) * 1e3
        print(f"{key:28s} {f0:12.0f} {f1:9.0f} {t0:9.1f} {t1:9.1f}")
    print("retention in effect:", all(r["retained"] for r in results["retained"]))


if __name__ == "__main__":
    main()
