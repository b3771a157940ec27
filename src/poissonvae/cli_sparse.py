"""``poissonvae gap``: the amortization gap of a trained run (P-VAE Fig. 5b)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import _Formatter, _wrap

# P-VAE paper (REFERENCE.md): best LCA MSE 50.17 at lifetime sparsity .917,
# ISTA 86.85 at .961; the conv|lin P-VAE reaches lifetime sparsity .94.
PAPER = "paper (van Hateren, K = 512): LCA MSE 50.17 @ s = .917; ISTA 86.85 @ s = .961; P-VAE conv|lin s = .94"


def cmd_gap(args: argparse.Namespace) -> int:
    from .config import ConfigError, RunConfig
    from .data import prepare_patches
    from .runs import CONFIG, METRICS, WEIGHTS
    from .sparse_coding.experiments import amortization_gap, dictionary_from_weights

    run = Path(args.run_dir)
    for name in (CONFIG, WEIGHTS, METRICS):
        if not (run / name).is_file():
            raise ConfigError(f"{run} is not a finished run directory: it has no {name}")
    if not args.penalties or any(p < 0 for p in args.penalties):
        raise ConfigError(f"--penalties must be non-negative numbers, got {args.penalties}")
    cfg = RunConfig.load(run / CONFIG)
    own = json.loads((run / METRICS).read_text())
    _, val = prepare_patches(cfg.data).tensors()
    val = val[: args.n_val] if args.n_val else val
    df = amortization_gap(dictionary_from_weights(run / WEIGHTS), val, args.penalties, method=args.method,
                          max_iter=args.max_iter, label=f"{args.method} on {run.name}")
    out = Path(args.out) if args.out else run / f"gap_{args.method}.csv"
    df.to_csv(out, index=False)
    print(f"encoder of {run.name}: MSE {own['mse']:.2f}, lifetime sparsity {own['lifetime_sparsity']:.3f} "
          f"(z sampled at T = 0)")
    print(f"{args.method} inference on its dictionary ({len(val)} validation patches, unit-norm columns):")
    print(df[["penalty", "mse", "lifetime_sparsity", "proportion_zeros", "active_units"]].to_string(index=False))
    print(PAPER)
    print(f"table: {out}")
    return 0


def add_sparse_commands(sub) -> None:
    p = sub.add_parser(
        "gap", formatter_class=_Formatter, help="amortization gap: iterative sparse coding on a run's dictionary",
        description=_wrap("Run LCA (or ISTA/FISTA) inference on the learned dictionary of a finished run, at "
                          "several L1 penalties, on the run's own validation patches, and print MSE and lifetime "
                          "sparsity beside the run's encoder (P-VAE Fig. 5b)."),
        epilog="example:\n  poissonvae gap sweeps/quick/runs/poisson_K512_beta1_seed0 --penalties 0.1 0.3 1 3")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--penalties", nargs="+", type=float, default=[0.1, 0.3, 1.0, 3.0], help="L1 penalties")
    p.add_argument("--method", choices=("lca", "ista", "fista"), default="lca")
    p.add_argument("--max-iter", type=int, default=1000, help="inference iterations at most")
    p.add_argument("--n-val", type=int, default=5000, help="validation patches used (0: all)")
    p.add_argument("--out", metavar="FILE.csv", help="table (default: RUN_DIR/gap_METHOD.csv)")
    p.set_defaults(func=cmd_gap)
