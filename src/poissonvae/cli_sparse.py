"""``poissonvae sparse``: the sparse-coding baselines of P-VAE Fig. 5b.

It learns one dictionary per (method, L1 penalty) on whitened patches and
measures MSE and lifetime sparsity of the validation codes (resumable: finished
points are kept in ``OUT/sparse_results.csv`` and skipped), then draws Fig. 5b
and the best-model table through :mod:`.cli_fig5b`, which also holds
``poissonvae fig5b`` and ``gap``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from .cli import _Formatter, _wrap, add_data_args, data_config
from .cli_fig5b import (
    SPARSE_RESULTS,
    add_fig5b_commands,
    check_gaps,
    check_sweep,
    config_error,
    figure_args,
    read_sparse_results,
    write_fig5b,
)

SPARSE_SETTINGS, DICTIONARIES = "sparse.json", "dictionaries"
EXTRA_COLUMNS = ["K", "seconds"]  # beside sparse_coding.COLUMNS in sparse_results.csv

# Penalties are the ``lambda`` of E = 1/2 ||x - Phi z||^2 + lambda ||z||_1 (P-VAE
# eq. (1) with a 1/2; unit-norm columns, z-scored patches). The grids span codes
# from dense (lifetime sparsity ~.6) to very sparse (~.99), bracketing the paper's
# best LCA/ISTA models (.917 / .961). The dictionary step is scaled by the codes'
# energy (learn_dictionary's scale_lr) so that one learning rate suits every penalty.
PRESETS = {
    # About two minutes on 2 CPU cores; the quick VAE sweep's patches (its data settings,
    # so the cache is shared), dictionaries fit on 10k of them, every validation patch coded.
    "quick": dict(K=128, penalties=[0.1, 0.2, 0.4, 0.8, 1.6, 3.2], methods=["lca", "ista", "fista"], epochs=10,
                  batch_size=250, lr=0.03, max_iter=100, eval_max_iter=300, tol=1e-4, n_fit=10_000, n_eval=0,
                  data=dict(n_train=40_000, n_val=10_000)),
    # The paper's size: K = 512 and every patch of the paper-sized data settings (100k
    # training patches, as the paper's 107,520). Inference-bound: hours on a CPU.
    "paper": dict(K=512, penalties=[0.1, 0.2, 0.4, 0.8, 1.2, 1.6, 2.4, 3.2], methods=["lca", "ista", "fista"],
                  epochs=30, batch_size=250, lr=0.03, max_iter=300, eval_max_iter=1000, tol=1e-4, n_fit=0,
                  n_eval=0, data=dict()),
}
# Settings that change the result: a directory's rows are only valid for these.
IDENTITY = ("K", "nonnegative", "epochs", "batch_size", "lr", "scale_lr", "seed", "max_iter", "eval_max_iter",
            "tol", "n_fit", "n_eval")


# ------------------------------------------------------------------ poissonvae sparse
def sparse_settings(args: argparse.Namespace) -> tuple[dict, object]:
    """The settings of a `poissonvae sparse` call (preset, then flags), and its
    DataConfig, all validated; raises ConfigError before any work."""
    from .data.config import DataConfig
    from .sparse_coding import METHODS
    from .sweep import SweepConfig

    preset = PRESETS[args.preset]
    s = {k: v for k, v in preset.items() if k != "data"}
    for key in ("K", "penalties", "methods", "epochs", "batch_size", "lr", "max_iter", "eval_max_iter", "tol",
                "n_fit", "n_eval", "seed"):
        value = getattr(args, key)
        if value is not None:
            s[key] = value
    s.setdefault("seed", 0)
    s["nonnegative"] = not args.signed
    s["compile"] = bool(args.compile)  # a run option, not part of a run's identity (like train.compile)
    s["scale_lr"] = True
    if args.threads is not None and args.threads < 1:
        raise config_error(f"--threads must be >= 1, got {args.threads}")
    for key in ("K", "epochs", "batch_size", "max_iter", "eval_max_iter"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise config_error(f"--{key.replace('_', '-')} must be an integer >= 1, got {s[key]!r}")
    for key in ("n_fit", "n_eval", "seed"):
        if s[key] < 0:
            raise config_error(f"--{key.replace('_', '-')} must be >= 0 (0: all patches), got {s[key]}")
    if not (math.isfinite(s["lr"]) and s["lr"] > 0):
        raise config_error(f"--lr must be a positive number, got {s['lr']}")
    if not (math.isfinite(s["tol"]) and s["tol"] >= 0):
        raise config_error(f"--tol must be >= 0, got {s['tol']}")
    bad = [p for p in s["penalties"] if not (math.isfinite(p) and p >= 0)]
    if bad or not s["penalties"]:
        raise config_error(f"--penalties must be finite numbers >= 0, got {s['penalties']}")
    s["penalties"] = sorted({float(p) for p in s["penalties"]})
    unknown = [m for m in s["methods"] if m not in METHODS]
    if unknown:
        raise config_error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    s["methods"] = list(dict.fromkeys(s["methods"]))
    if s["compile"] and "fista" not in s["methods"]:
        raise config_error(f"--compile fuses FISTA's kernels, but --methods is {s['methods']} (no fista)")
    if args.min_sparsity is not None and not 0 <= args.min_sparsity <= 1:
        raise config_error(f"--min-sparsity must be in [0, 1], got {args.min_sparsity}")
    # Data: the sweep's own patches when one is given (the VAEs' data), else the preset's size.
    sweep = check_sweep(args.sweep)
    if sweep is not None and (sweep / "sweep.json").is_file():
        base = SweepConfig.load(sweep / "sweep.json").data
    else:
        base = DataConfig(**{**DataConfig().to_dict(), **preset["data"]})
    data = data_config(args, base)
    data.validate()
    return s, data


def _identity(settings: dict, data) -> dict:
    d = data.to_dict()
    d.pop("cache_dir")
    return {"data": d, **{k: settings[k] for k in IDENTITY}}


def _write_csv(df, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)  # atomic: an interrupted write never leaves half a table


def cmd_sparse(args: argparse.Namespace) -> int:
    settings, data = sparse_settings(args)  # everything validated before any work
    sweep, gaps = check_sweep(args.sweep), check_gaps(args.gap)
    out = Path(args.out or f"sparse/{args.preset}")
    if out.exists() and not out.is_dir():
        raise config_error(f"--out {out} exists and is not a directory")
    identity = _identity(settings, data)
    settings_path = out / SPARSE_SETTINGS
    if settings_path.is_file():
        saved = json.loads(settings_path.read_text()).get("identity")
        if saved != identity:
            diff = sorted(k for k in set(saved or {}) | set(identity) if (saved or {}).get(k) != identity.get(k))
            raise config_error(f"{out} holds sparse-coding results of other settings (differing: {', '.join(diff)}); "
                                "choose another --out, or rerun with the same settings to add methods/penalties")
    done = read_sparse_results(out)
    finished = set() if done is None else {(m, float(p)) for m, p in zip(done["method"], done["penalty"])}
    jobs = [(m, p) for m in settings["methods"] for p in settings["penalties"] if (m, p) not in finished]
    n_all = len(settings["methods"]) * len(settings["penalties"])
    print(f"sparse coding: K={settings['K']}, methods {', '.join(settings['methods'])}, penalties "
          f"{', '.join(f'{p:g}' for p in settings['penalties'])} -> {out}")
    if len(jobs) < n_all:
        print(f"  {n_all - len(jobs)} of {n_all} (method, penalty) points already in {out / SPARSE_RESULTS}: skipped")
    if jobs:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        done = _run_jobs(jobs, settings, data, out, identity, done, progress=not args.no_progress)
    write_fig5b(out, done, sweep, gaps, K=args.vae_K or settings["K"], min_sparsity=args.min_sparsity,
                paper=not args.no_paper)
    return 0


def _run_jobs(jobs, settings: dict, data, out: Path, identity: dict, done, progress: bool):
    import numpy as np
    import pandas as pd

    from .data import prepare_patches
    from .sparse_coding import COLUMNS, penalty_point

    train, val = prepare_patches(data, progress=progress).tensors()
    train = train[: settings["n_fit"]] if settings["n_fit"] else train
    val = val[: settings["n_eval"]] if settings["n_eval"] else val
    out.mkdir(parents=True, exist_ok=True)
    (out / DICTIONARIES).mkdir(exist_ok=True)
    settings_path = out / SPARSE_SETTINGS
    tmp = settings_path.with_name(settings_path.name + ".tmp")
    tmp.write_text(json.dumps({"identity": identity, "n_train_used": int(train.shape[0]),
                               "n_val_used": int(val.shape[0])}, indent=2) + "\n")
    os.replace(tmp, settings_path)
    columns = [*COLUMNS, *EXTRA_COLUMNS]
    table = done if done is not None else pd.DataFrame(columns=columns)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs) * settings["epochs"], unit="epoch", desc="sparse coding")
    try:
        for method, penalty in jobs:
            t0 = time.perf_counter()
            if bar is not None:
                bar.set_postfix_str(f"{method} penalty={penalty:g}")

            def on_epoch(h: dict, method=method, penalty=penalty) -> None:
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{method} penalty={penalty:g} train MSE={h['mse']:.1f}")

            row, phi = penalty_point(train, val, settings["K"], penalty, method=method,
                                     nonnegative=settings["nonnegative"], epochs=settings["epochs"],
                                     batch_size=settings["batch_size"], lr=settings["lr"], seed=settings["seed"],
                                     max_iter=settings["max_iter"], tol=settings["tol"],
                                     eval_max_iter=settings["eval_max_iter"], on_epoch=on_epoch,
                                     scale_lr=settings["scale_lr"], compile=settings["compile"] and method == "fista")
            row.update(K=settings["K"], seconds=time.perf_counter() - t0)
            np.save(out / DICTIONARIES / f"{method}_penalty{penalty:g}.npy", phi.numpy())
            new = pd.DataFrame([row], columns=columns)
            table = new if len(table) == 0 else pd.concat([table, new], ignore_index=True)
            _write_csv(table, out / SPARSE_RESULTS)  # after every point: an interrupted sweep resumes here
            msg = (f"{method} penalty={penalty:g}: val MSE {row['mse']:.2f}, lifetime sparsity "
                   f"{row['lifetime_sparsity']:.3f}, zeros {row['proportion_zeros']:.3f} ({row['seconds']:.0f} s)")
            if bar is not None:
                bar.write(msg)
            else:
                print(msg)
    finally:
        if bar is not None:
            bar.close()
    return table


def add_sparse_commands(sub) -> None:
    p = sub.add_parser(
        "sparse", formatter_class=_Formatter, help="sparse-coding baselines: LCA/ISTA/FISTA penalty sweeps (Fig. 5b)",
        description=_wrap(
            "For each method (LCA, ISTA, FISTA) and L1 penalty, learn a unit-norm dictionary of K columns on "
            "whitened training patches (inference by that method, then a gradient step on the dictionary), code "
            "the validation patches with it and measure MSE and lifetime sparsity (P-VAE eq. 5). Results are "
            "appended to OUT/sparse_results.csv after every point, so rerunning the same command skips finished "
            "points (and adds any new --methods/--penalties). Then draws Fig. 5b from every point in OUT (with a "
            "sweep's VAEs when --sweep is given; by default the same patches as that sweep) and writes the "
            "best-model table beside the paper's. Objective per patch: 1/2 ||x - Phi z||^2 + penalty ||z||_1 "
            "(P-VAE eq. 1 with a 1/2), z >= 0 unless --signed."),
        epilog="examples:\n  poissonvae sparse --out sparse/quick\n"
               "  poissonvae sparse --sweep sweeps/quick --gap sweeps/quick/runs/poisson_K512_beta1_seed0 "
               "--K 512 --out sparse/k512\n"
               "  poissonvae sparse --preset paper --sweep sweeps/paper --out sparse/paper")
    p.add_argument("--preset", choices=tuple(PRESETS), default="quick",
                   help="starting settings: quick (K=128, 10k training patches, 10 epochs: minutes on 2 cores) or "
                        "paper (K=512, 100k training patches, 30 epochs)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: sparse/PRESET)")
    g = p.add_argument_group("sparse coding options (default: the preset's)")
    g.add_argument("--methods", nargs="+", metavar="METHOD", help="inference methods: lca, ista, fista")
    g.add_argument("--penalties", nargs="+", type=float, metavar="P", help="L1 penalties (one dictionary each)")
    g.add_argument("--K", metavar="K", type=int, help="dictionary size (number of units)")
    g.add_argument("--epochs", metavar="N", type=int, help="passes over the training patches per dictionary")
    g.add_argument("--batch-size", metavar="B", type=int, help="patches per dictionary update")
    g.add_argument("--lr", metavar="LR", type=float, help="dictionary learning rate")
    g.add_argument("--max-iter", metavar="N", type=int, help="inference iterations at most, while learning")
    g.add_argument("--eval-max-iter", metavar="N", type=int, help="inference iterations at most, on validation patches")
    g.add_argument("--tol", metavar="TOL", type=float, help="inference stopping tolerance (relative change)")
    g.add_argument("--seed", metavar="S", type=int, help="seed of the initial dictionary and batch order (default 0)")
    g.add_argument("--n-fit", metavar="N", type=int, help="training patches used (first N; 0: all)")
    g.add_argument("--n-eval", metavar="N", type=int, help="validation patches coded (first N; 0: all)")
    g.add_argument("--signed", action="store_true", help="codes of either sign (default: z >= 0, as in the paper)")
    g.add_argument("--vae-K", metavar="K", type=int,
                   help="latent size of the VAE points (default: --K; the sweep's largest if absent)")
    g.add_argument("--threads", metavar="N", type=int, help="torch threads (default: torch's; 1 is faster for "
                   "small K on a machine shared with other jobs)")
    g.add_argument("--compile", action="store_true",
                   help="run FISTA's elementwise work as torch.compile'd kernels (needs a C++ compiler; compiles "
                        "once, a few seconds; results equal to float rounding; other methods are unaffected)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    figure_args(p)
    add_data_args(p)
    p.set_defaults(func=cmd_sparse)
    add_fig5b_commands(sub)
