"""``poissonvae sweep``, ``figures`` and ``report``: the metabolic-cost experiment from one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import TRAIN_OPTIONS, _Formatter, _add_options, _check_device, _given, _wrap, add_data_args, data_config

# The training flags that make sense for a whole grid (family, K, beta and seed are grid axes).
_SHARED = {"--epochs", "--warmup-epochs", "--lr", "--batch-size", "--estimator", "--device", "--checkpoint-every",
           "--compile", "--cuda-graph"}
SWEEP_TRAIN_OPTIONS = [opt for opt in TRAIN_OPTIONS if opt[0] in _SHARED]


def print_claims(claims: list[dict]) -> None:
    """One line per claim of the paper: whether it holds on these runs, and what was measured."""
    for c in claims:
        mark = {True: "holds", False: "FAILS", None: "n/a"}[c["holds"]]
        print(f"  [{mark:5}] {c['claim']}: {c['measured']}")


def sweep_config(args: argparse.Namespace):
    from .sweep import SweepConfig, preset

    sweep = SweepConfig.load(args.config) if args.config else preset(args.preset)
    sweep.data = data_config(args, sweep.data)
    if "patch_size" in _given(args, "data"):
        sweep.model.input_dim = sweep.data.patch_size**2
    for name, value in _given(args, "train").items():
        setattr(sweep.train, name, value)
    for attr, flag in (("families", "families"), ("Ks", "K"), ("betas", "beta"), ("seeds", "seeds")):
        value = getattr(args, flag)
        if value is not None:
            setattr(sweep, attr, list(value))
    return sweep.validate()


def cmd_sweep(args: argparse.Namespace) -> int:
    from .report import claims, write_report
    from .sweep import run_sweep

    sweep = sweep_config(args)  # everything validated before any work
    _check_device(sweep.train.device)
    out = Path(args.out or f"sweeps/{args.preset if not args.config else Path(args.config).stem}")
    n = len(sweep.runs())
    print(f"sweep: {n} runs in {len(sweep.groups())} groups -> {out} (engine: {args.engine})")
    df = run_sweep(sweep, out, engine=args.engine, address=args.address, progress=not args.no_progress)
    print(f"results: {out / 'results.parquet'} ({len(df)} runs)")
    if not args.no_report:
        report = write_report(out, fmt=args.format)
        print(f"report:  {report}")
        print_claims(claims(df))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from .paper_figures import make_all

    paths = make_all(Path(args.sweep_dir), Path(args.out) if args.out else None, K=args.K)
    print(f"wrote {len(paths)} files to {paths[0].parent if paths else args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(f"report: {write_report(Path(args.sweep_dir), fmt=args.format, K=args.K)}")
    return 0


def add_sweep_commands(sub) -> None:
    p = sub.add_parser(
        "sweep", formatter_class=_Formatter, help="train a beta x K x family grid (the metabolic-cost experiment)",
        description=_wrap(
            "Train every run of a grid of families x K x beta x seeds. All (beta, seed) variants of one "
            "(family, K) train together as one stacked model. Finished runs are skipped and an interrupted "
            "sweep continues from its checkpoints, so running the same command again completes it. Writes "
            "results.parquet, figures/ and a report. Presets: quick (minutes on a laptop CPU) and paper "
            "(128 models, 3000 epochs each)."),
        epilog="examples:\n  poissonvae sweep --preset quick --out sweeps/quick\n"
               "  poissonvae sweep --preset paper --device cuda --out sweeps/paper\n"
               "  poissonvae sweep --preset paper --engine ray --address auto --out /shared/sweeps/paper\n"
               "  poissonvae sweep --families poisson --K 64 256 --beta 0.1 1 4 --epochs 50 --out sweeps/mine")
    p.add_argument("--preset", choices=("quick", "paper"), default="quick", help="starting grid and settings")
    p.add_argument("--config", metavar="FILE.json", help="a SweepConfig JSON (e.g. a previous sweep.json) instead of a preset")
    p.add_argument("--families", nargs="+", metavar="FAMILY", help="latent families of the grid")
    p.add_argument("--K", nargs="+", type=int, metavar="K", help="latent sizes of the grid")
    p.add_argument("--beta", nargs="+", type=float, metavar="BETA", help="KL weights of the grid")
    p.add_argument("--seeds", nargs="+", type=int, metavar="S", help="initialisation seeds of the grid")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="run here, or one Ray task per group")
    p.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    p.add_argument("--out", metavar="DIR", help="sweep directory (default: sweeps/PRESET)")
    p.add_argument("--format", choices=("md", "html"), default="md", help="report format")
    p.add_argument("--no-report", action="store_true", help="skip figures and report")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_options(p, "training options (shared by every run)", SWEEP_TRAIN_OPTIONS)
    add_data_args(p)
    p.set_defaults(func=cmd_sweep)

    for name, func, text in (("figures", cmd_figures, "draw Figs. 1-7 and dictionaries from a sweep's results"),
                             ("report", cmd_report, "write a report: the paper's claims beside a sweep's results")):
        p = sub.add_parser(name, formatter_class=_Formatter, help=text,
                           description=_wrap(text + " (reads results.parquet and saved weights only; never retrains)."),
                           epilog=f"example:\n  poissonvae {name} sweeps/quick")
        p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a directory written by `poissonvae sweep`")
        p.add_argument("--K", type=int, default=512, help="latent size of Figs. 6-7 (largest present if absent)")
        if name == "figures":
            p.add_argument("--out", metavar="DIR", help="output folder (default: SWEEP_DIR/figures)")
        else:
            p.add_argument("--format", choices=("md", "html"), default="md", help="report format")
        p.set_defaults(func=func)
