"""Command-line interface: ``poissonvae data``, ``train``, ``sweep``, ``figures`` and ``report``.

Every setting is validated before any data is prepared or any file is written;
errors are printed as ``poissonvae: error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from .config import ConfigError, RunConfig
from .data.config import DataConfig, is_digit_source
from .families import FAMILIES

_DATA, _RUN = DataConfig(), RunConfig()

# (flag, section, field, metavar, help): one flag per config field; the type and
# the default shown in --help are the dataclass field's.
DATA_OPTIONS = [
    ("--source", "data", "source", "shipped|FOLDER|digits|mnist:FOLDER", 'images: "shipped" (photographs '
     "bundled with scikit-image and scikit-learn) or a folder of PNG/JPEG/TIFF or van Hateren .iml files "
     '(whitened patches); or 28x28 digits in [0, 1] (--patch-size 28): "digits" (scikit-learn\'s 8x8 '
     'digits upsampled) or "mnist:FOLDER" (MNIST IDX files)'),
    ("--n-train", "data", "n_train", "N", "number of training patches"),
    ("--n-val", "data", "n_val", "N", "number of validation patches"),
    ("--patch-size", "data", "patch_size", "P", "patch side in pixels (the model input is P*P)"),
    ("--data-seed", "data", "seed", "S", "seed of the image split and patch sampling"),
    ("--val-fraction", "data", "val_fraction", "F", "fraction of IMAGES held out for validation"),
    ("--cache-dir", "data", "cache_dir", "DIR", "folder for cached patch sets"),
]
TRAIN_OPTIONS = [
    ("--family", "model", "family", "{%s}" % ",".join(FAMILIES), "latent family"),
    ("--K", "model", "K", "K", "number of latent units"),
    ("--arch", "model", "arch", "{lin|lin,conv|lin,conv|conv}", "encoder|decoder architecture; "
     "conv|conv has no closed-form objective (use --estimator mc or st)"),
    ("--conv-channels", "model", "conv_channels", "C", "width of the conv networks (C and 2C channels)"),
    ("--indicator", "model", "indicator", "{cubic,sigmoid}", "soft step of the relaxed Poisson sampler"),
    ("--beta", "train", "beta", "BETA", "KL weight (beta-VAE)"),
    ("--epochs", "train", "epochs", "N", "training epochs after the warm-up"),
    ("--warmup-epochs", "train", "warmup_epochs", "N", "learning-rate warm-up epochs"),
    ("--lr", "train", "lr", "LR", "peak learning rate (Adamax, cosine decay)"),
    ("--batch-size", "train", "batch_size", "B", "patches per step"),
    ("--estimator", "train", "estimator", "{exact,mc,st}", "loss/gradient: closed form, relaxed samples, "
     "or straight-through samples"),
    ("--temperature-start", "train", "temperature_start", "T", "relaxation temperature at the start"),
    ("--temperature-end", "train", "temperature_end", "T", "relaxation temperature after annealing"),
    ("--kl-anneal-fraction", "train", "kl_anneal_fraction", "F", "fraction of steps over which beta ramps up"),
    ("--grad-clip", "train", "grad_clip", "NORM", "maximum gradient norm"),
    ("--seed", "train", "seed", "S", "seed of the initialisation and sampling noise"),
    ("--device", "train", "device", "{cpu,cuda,auto}", "where to train (also cuda:N)"),
    ("--checkpoint-every", "train", "checkpoint_every", "N", "epochs between checkpoints"),
    ("--compile", "train", "compile", None, "torch.compile the exact objective's elementwise kernels "
     "(P-VAE; needs a C++ compiler or a GPU; compiles once, ~10-20 s)"),
    ("--cuda-graph", "train", "cuda_graph", None, "on a GPU with --estimator exact, capture one training step "
     "as a CUDA graph and replay it (fewer kernel launches from Python; same math)"),
]
METRIC_KEYS = ("mse", "r2", "metabolic_cost", "proportion_zeros", "lifetime_sparsity", "neg_elbo", "kl")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults, keep the epilog's line breaks, and skip "(default: None)"."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _wrap(text: str) -> str:
    return textwrap.fill(text, 78)


def _add_options(parser: argparse.ArgumentParser, title: str, options, aliases=None) -> None:
    group = parser.add_argument_group(title)
    for flag, section, name, metavar, text in options:
        default = getattr(getattr(_RUN, section), name)
        flags = (aliases or {}).get(flag, (flag,))
        if isinstance(default, bool):  # a switch: given means true
            group.add_argument(*flags, dest=f"{section}.{name}", action="store_const", const=True, default=None,
                               help=text)
            continue
        group.add_argument(*flags, dest=f"{section}.{name}", type=type(default), default=None,
                           metavar=metavar, help=f"{text} (default: {default})")


def add_data_args(parser: argparse.ArgumentParser, aliases=None) -> None:
    """Add the data-preparation flags (shared by ``data`` and ``train``)."""
    _add_options(parser, "data options", DATA_OPTIONS, aliases)


def _given(args: argparse.Namespace, section: str) -> dict:
    prefix = section + "."
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def data_config(args: argparse.Namespace, base: DataConfig | None = None) -> DataConfig:
    """``base`` (default: the paper's settings) with the data flags that were given."""
    d = (base or DataConfig()).to_dict()
    d.update(_given(args, "data"))
    return DataConfig.from_dict(d)


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={device!r} but CUDA is not available; use --device cpu or auto")


def cmd_data(args: argparse.Namespace) -> int:
    from .data.patches import cache_path, prepare_patches

    cfg = data_config(args)
    cfg.validate()
    export = Path(args.export) if args.export else None
    if export is not None:
        export.parent.mkdir(parents=True, exist_ok=True)
    ps = prepare_patches(cfg, progress=True)
    print(f"train patches:  {ps.train.shape} from {len(ps.train_images)} images: {', '.join(ps.train_images)}")
    print(f"val patches:    {ps.val.shape} from {len(ps.val_images)} images: {', '.join(ps.val_images)}")
    if is_digit_source(cfg.source):
        print("pixels:         in [0, 1], not whitened or z-scored (digits)")
    else:
        print(f"z-score:        mean {ps.mean:.6g}, std {ps.std:.6g} (raw training patches)")
    print(f"cache:          {cache_path(cfg)}")
    if export is not None:
        import numpy as np

        with open(export, "wb") as f:  # a file handle: np.savez keeps the exact name
            np.savez(f, train=ps.train, val=ps.val, mean=ps.mean, std=ps.std,
                     train_images=np.array(ps.train_images), val_images=np.array(ps.val_images),
                     config=np.array(json.dumps(cfg.to_dict(), sort_keys=True)))
        print(f"exported:       {export}")
    return 0


def _run_config(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    from .runs import CONFIG

    overrides = {s: _given(args, s) for s in ("data", "model", "train")}
    if args.resume is not None:
        given = sorted(f"{s}.{k}" for s, d in overrides.items() for k in d)
        if given or args.config:
            raise ConfigError(f"--resume continues a run with its saved {CONFIG}; it takes no other "
                              f"settings (got {given or ['--config']})")
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise ConfigError(f"cannot resume {run_dir}: no such directory")
        if not (run_dir / CONFIG).is_file():
            raise ConfigError(f"cannot resume {run_dir}: it holds no {CONFIG}; start a run with "
                              f"`poissonvae train ... --out {run_dir}`")
        return RunConfig.load(run_dir / CONFIG), run_dir
    cfg = RunConfig.load(args.config) if args.config else RunConfig()
    cfg.data = data_config(args, cfg.data)
    if "patch_size" in overrides["data"]:  # the model input follows the patch size
        cfg.model.input_dim = cfg.data.patch_size**2
    for section in ("model", "train"):
        for name, value in overrides[section].items():
            setattr(getattr(cfg, section), name, value)
    run_dir = Path(args.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} exists and is not a directory")
    return cfg, run_dir


def cmd_train(args: argparse.Namespace) -> int:
    from .data import prepare_patches
    from .runs import CONFIG, is_finished, prepare_run_dir, train_run

    cfg, run_dir = _run_config(args)
    cfg.validate()
    _check_device(cfg.train.device)
    progress = not args.no_progress
    if (run_dir / CONFIG).exists():
        prepare_run_dir(cfg, run_dir)  # only compares: raises if the directory holds another config
    patches = None
    if not is_finished(run_dir):  # prepare data before train_run creates the run directory
        patches = prepare_patches(cfg.data, progress=progress)
    metrics = train_run(cfg, run_dir, progress=progress, patches=patches)
    print(f"run: {run_dir}")
    for key in METRIC_KEYS:
        if key in metrics:
            print(f"  {key:<18} {metrics[key]:.6g}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poissonvae", formatter_class=_Formatter,
        description=_wrap("Poisson variational autoencoders and their Gaussian controls on natural-image "
                          "patches."),
        epilog="examples:\n  poissonvae data --n-train 20000\n"
               "  poissonvae train --family poisson --K 512 --beta 1.0 --epochs 40 --out runs/pvae-K512\n"
               "  poissonvae sweep --preset quick --out sweeps/quick\n\n"
               "`poissonvae COMMAND --help` explains each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "data", formatter_class=_Formatter, help="prepare (and cache) whitened image patches",
        description=_wrap("Load images, whiten them, normalise local contrast, split the images into "
                          "train/val, sample patches, z-score them and cache the result. Prints a summary."),
        epilog="example:\n  poissonvae data --n-train 2000 --n-val 500 --export patches.npz")
    add_data_args(p, aliases={"--data-seed": ("--seed", "--data-seed")})
    p.add_argument("--export", metavar="FILE.npz", help="also write the patches and z-score statistics here")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser(
        "train", formatter_class=_Formatter, help="train one VAE into a run directory",
        description=_wrap("Train one VAE (lin|lin, conv|lin or conv|conv) and write a run directory (config.json, log.jsonl, "
                          "weights.safetensors, metrics.json, dictionary.png). Defaults are the paper's "
                          "settings. A finished run is not retrained; an interrupted one continues from "
                          "its checkpoint."),
        epilog="examples:\n"
               "  poissonvae train --family poisson --K 512 --beta 1.0 --epochs 40 --out runs/pvae-K512\n"
               "  poissonvae train --config base.json --beta 2.0 --out runs/beta2\n"
               "  poissonvae train --resume runs/pvae-K512")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="RUN_DIR", help="run directory to create (or continue)")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved config.json")
    p.add_argument("--config", metavar="FILE.json", help="start from this RunConfig JSON; flags given override it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_options(p, "model and training options", TRAIN_OPTIONS)
    add_data_args(p)
    p.set_defaults(func=cmd_train)

    from .cli_sparse import add_sparse_commands
    from .cli_sweep import add_sweep_commands
    from .cli_zoo import add_zoo_commands

    add_sweep_commands(sub)
    add_sparse_commands(sub)
    add_zoo_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # ConfigError, DataError, CheckpointError, FileNotFoundError, ...
        print(f"poissonvae: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # training diverged
        print(f"poissonvae: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("poissonvae: interrupted; `poissonvae train --resume RUN_DIR` continues a run "
              "from its last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
