"""``poissonvae zoo EXPERIMENT``: the P-VAE paper's model-zoo experiments, one command each."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import _Formatter, _add_options, _check_device, _given, _wrap, add_data_args, data_config
from .cli_sweep import SWEEP_TRAIN_OPTIONS, print_claims

_ZOO_TRAIN_OPTIONS = [o for o in SWEEP_TRAIN_OPTIONS if o[0] != "--estimator"]  # the estimator is a variant axis


def zoo_settings(args: argparse.Namespace):
    from .zoo import preset

    s = preset(args.preset)
    s.data = data_config(args, s.data)
    for name, value in _given(args, "train").items():
        setattr(s.train, name, value)
    for attr in ("K", "seeds", "betas", "families", "archs", "temperatures", "conv_channels"):
        value = getattr(args, attr)
        if value is not None:
            setattr(s, attr, list(value) if isinstance(value, list) else value)
    return s.validate()


def cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo import run_experiment, variants
    from .zoo.plan import sweep_for

    s = zoo_settings(args)
    _check_device(s.train.device)
    vs = variants(args.experiment, s)
    for v in vs:  # every run's config, before any work
        sweep_for(v, args.experiment, s).validate()
    out = Path(args.out or f"zoo/{args.preset}")
    print(f"zoo {args.experiment}: {len(vs)} variants x {len(s.seeds)} seeds at K = {s.K} -> {out}")
    table, files, claims = run_experiment(args.experiment, s, out, engine=args.engine, address=args.address,
                                          progress=not args.no_progress)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print_claims(claims)
    print("wrote: " + ", ".join(str(f) for f in files))
    return 0


def add_zoo_commands(sub) -> None:
    from .zoo.plan import ARCHS, EXPERIMENTS

    p = sub.add_parser(
        "zoo", formatter_class=_Formatter, help="the P-VAE paper's model-zoo experiments (Tables 2-3, Figs. 4, 5a, 9, 10)",
        description=_wrap(
            "Train the variants an experiment needs (family x encoder|decoder x gradient estimator x temperature; "
            "the seeds, and the betas of `sparsity`, of a variant train together as one stacked model), then write "
            "its table beside the paper's numbers, its figure and claims.md into OUT/EXPERIMENT/. Experiments: "
            "estimators (Table 2: % drop of validation -ELBO per family x EX/MC/ST x encoder), active (Table 3 + "
            "Fig. 10: proportion of active units; dead-neuron rule: an Otsu split of log per-unit KL into two "
            "groups at least a decade apart, else dead below 0.01 nats), dictionaries (Fig. 4), sparsity (Fig. 5a: MSE vs lifetime sparsity across beta), "
            "temperature (Fig. 9: final temperature, linear vs exponential annealing, hard forward). Experiments "
            "run into the same OUT share runs (active and dictionaries reuse the EX runs of estimators); finished "
            "runs are skipped and killed ones resume."),
        epilog="examples:\n  poissonvae zoo estimators --out zoo/quick\n  poissonvae zoo active --out zoo/quick\n"
               "  poissonvae zoo temperature --archs 'lin|lin' --seeds 0 1 --out zoo/quick\n"
               "  poissonvae zoo sparsity --preset paper --device cuda --out zoo/paper")
    p.add_argument("experiment", choices=EXPERIMENTS, metavar="EXPERIMENT", help=" | ".join(EXPERIMENTS))
    p.add_argument("--preset", choices=("quick", "paper"), default="quick",
                   help="quick: K = 64, 2 seeds, 21 epochs of 40,000 patches (CPU); paper: K = 512, 5 seeds, 3005 epochs")
    p.add_argument("--K", type=int, help="latent size")
    p.add_argument("--seeds", nargs="+", type=int, metavar="S", help="initialisation seeds")
    p.add_argument("--betas", nargs="+", type=float, metavar="BETA", help="KL weights (sparsity experiment)")
    p.add_argument("--families", nargs="+", metavar="FAMILY", help="families (default: the experiment's own)")
    p.add_argument("--archs", nargs="+", choices=ARCHS, metavar="ARCH", help="encoder|decoder: " + ", ".join(ARCHS))
    p.add_argument("--temperatures", nargs="+", type=float, metavar="T", help="final temperatures (temperature experiment)")
    p.add_argument("--conv-channels", type=int, dest="conv_channels", metavar="C",
                   help="width of the conv encoders (quick: 8, paper: 16)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="run here, or one Ray task per group")
    p.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: zoo/PRESET)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_options(p, "training options (shared by every run)", _ZOO_TRAIN_OPTIONS)
    add_data_args(p)
    p.set_defaults(func=cmd_zoo)
