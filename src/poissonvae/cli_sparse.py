"""``poissonvae sparse``, ``fig5b`` and ``gap``: the sparse-coding baselines and the
amortization gap of P-VAE Fig. 5b.

``sparse`` learns one dictionary per (method, L1 penalty) on whitened patches and
measures MSE and lifetime sparsity of the validation codes (resumable: finished
points are kept in ``OUT/sparse_results.csv`` and skipped); ``gap`` runs LCA on a
trained VAE's dictionary; ``fig5b`` draws the three, beside the VAEs of a sweep,
and writes the best-model table, from files only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from .cli import _Formatter, _wrap, add_data_args, data_config

# P-VAE paper (REFERENCE.md): best LCA MSE 50.17 at lifetime sparsity .917,
# ISTA 86.85 at .961; the conv|lin P-VAE reaches lifetime sparsity .94.
PAPER = "paper (van Hateren, K = 512): LCA MSE 50.17 @ s = .917; ISTA 86.85 @ s = .961; P-VAE conv|lin s = .94"

SPARSE_RESULTS, SPARSE_SETTINGS, DICTIONARIES = "sparse_results.csv", "sparse.json", "dictionaries"
FIG5B, BEST = "fig5b.png", "best_models"
EXTRA_COLUMNS = ["K", "seconds"]  # beside sparse_coding.COLUMNS in sparse_results.csv
MIN_SPARSITY = 0.9  # = sparse_coding.figures.MIN_SPARSITY (not imported: keeps `--help` free of matplotlib)

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


def _config_error(msg: str):
    from .config import ConfigError

    return ConfigError(msg)


# ------------------------------------------------------------------ reading inputs
def _check_sweep(sweep: str | None) -> Path | None:
    if sweep is None:
        return None
    path = Path(sweep)
    if not (path / "results.parquet").is_file():
        raise _config_error(f"--sweep {path}: no results.parquet there (a directory written by `poissonvae sweep`)")
    return path


def _check_gaps(paths: list[str] | None) -> list[Path]:
    """Each --gap is a CSV written by `poissonvae gap` or a run directory holding gap_*.csv."""
    out = []
    for p in paths or []:
        path = Path(p)
        if path.is_dir():
            if not sorted(path.glob("gap_*.csv")):
                raise _config_error(f"--gap {path}: no gap_*.csv in that directory; run `poissonvae gap {path}` first")
        elif not path.is_file():
            raise _config_error(f"--gap {path}: no such file or directory")
        out.append(path)
    return out


def read_gaps(paths: list[Path]):
    """(rows of all gap tables, encoder points): a run directory's own metrics give
    the open circle of P-VAE Fig. 5b (its encoder's MSE and lifetime sparsity)."""
    import pandas as pd

    from .runs import CONFIG, METRICS

    tables, encoders = [], []
    for path in paths:
        run = path if path.is_dir() else path.parent
        K = json.loads((run / CONFIG).read_text()).get("model", {}).get("K") if (run / CONFIG).is_file() else None
        for csv in sorted(path.glob("gap_*.csv")) if path.is_dir() else [path]:
            df = pd.read_csv(csv)
            missing = [c for c in ("method", "penalty", "mse", "lifetime_sparsity") if c not in df.columns]
            if missing:
                raise _config_error(f"{csv} is not a gap table (written by `poissonvae gap`): it lacks {missing}")
            if K is not None and "K" not in df.columns:
                df["K"] = K  # the size of the VAE dictionary it re-used
            tables.append(df)
        if (run / METRICS).is_file():
            m = json.loads((run / METRICS).read_text())
            if m.get("mse") is not None and m.get("lifetime_sparsity") is not None:
                encoders.append({"label": f"encoder of {run.name}", "mse": m["mse"],
                                 "lifetime_sparsity": m["lifetime_sparsity"]})
    return (pd.concat(tables, ignore_index=True) if tables else None), encoders


def read_sparse_results(out: Path):
    import pandas as pd

    from .sparse_coding import COLUMNS

    path = out / SPARSE_RESULTS
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise _config_error(f"{path} is not a table written by `poissonvae sparse`: it lacks {missing}")
    return df


# ------------------------------------------------------------------ the figure and the table
def write_fig5b(out_dir: Path, sparse=None, sweep: Path | None = None, gaps: list[Path] = (), K: int | None = None,
                min_sparsity: float | None = None, paper: bool = True) -> list[Path]:
    """Fig. 5b (PNG, PDF, CSV of its points) and the best-model table (CSV,
    Markdown) into ``out_dir`` from tables on disk; prints the table."""
    import pandas as pd

    from .sparse_coding.figures import best_models, candidates, fig5b, vae_points, write_best_models

    gap_rows, encoders = read_gaps(list(gaps))
    curves = [d for d in (sparse, gap_rows) if d is not None and len(d)]
    curves = pd.concat(curves, ignore_index=True) if curves else None
    vae, note = None, ""
    if sweep is not None:
        vae, K_used = vae_points(pd.read_parquet(sweep / "results.parquet"), K)
        if K is not None and K_used != K:
            note = f" (K={K} not in the sweep: its largest, K={K_used})"
    if curves is None and vae is None and not encoders:
        raise _config_error("nothing to draw: give --sparse DIR, --sweep DIR or --gap PATH")
    Ks = set()
    if sparse is not None and len(sparse) and "K" in sparse:
        Ks = {int(k) for k in sparse["K"].dropna()}
    Ks = sorted(Ks)
    title = "P-VAE Fig. 5b: " + (f"sparse coding K={'/'.join(map(str, Ks))}" if Ks else "MSE vs sparsity")
    if vae is not None:
        title += f"; VAEs K={int(vae['K'].iloc[0])}{note}"
    paths = fig5b(curves, out_dir / FIG5B, paper=paper, title=title, vae=vae, encoders=encoders)
    table = candidates(curves, vae)
    for enc in encoders:  # an encoder is its family's model too, but shown on its own row
        table = pd.concat([table, pd.DataFrame([{"method": enc["label"], "kind": "VAE encoder", "setting": "",
                                                  "mse": enc["mse"], "lifetime_sparsity": enc["lifetime_sparsity"]}])],
                          ignore_index=True)
    best = best_models(table, min_sparsity)
    paths += write_best_models(best, out_dir, min_sparsity, BEST)
    rule = "all models" if min_sparsity is None else f"lifetime sparsity >= {min_sparsity:g}"
    print(f"best model per method (lowest MSE among models with {rule}; rule met = no: none reaches it, "
          "the sparsest shown):")
    shown = best[["method", "kind", "K", "setting", "mse", "lifetime_sparsity", "proportion_zeros", "rule_met",
                  "paper_mse", "paper_lifetime_sparsity"]]
    shown = shown.assign(K=[str(int(k)) if pd.notna(k) else "-" for k in shown["K"]])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    print(PAPER)
    for p in paths:
        print(f"wrote {p}")
    return paths


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
    s["scale_lr"] = True
    if args.threads is not None and args.threads < 1:
        raise _config_error(f"--threads must be >= 1, got {args.threads}")
    for key in ("K", "epochs", "batch_size", "max_iter", "eval_max_iter"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise _config_error(f"--{key.replace('_', '-')} must be an integer >= 1, got {s[key]!r}")
    for key in ("n_fit", "n_eval", "seed"):
        if s[key] < 0:
            raise _config_error(f"--{key.replace('_', '-')} must be >= 0 (0: all patches), got {s[key]}")
    if not (math.isfinite(s["lr"]) and s["lr"] > 0):
        raise _config_error(f"--lr must be a positive number, got {s['lr']}")
    if not (math.isfinite(s["tol"]) and s["tol"] >= 0):
        raise _config_error(f"--tol must be >= 0, got {s['tol']}")
    bad = [p for p in s["penalties"] if not (math.isfinite(p) and p >= 0)]
    if bad or not s["penalties"]:
        raise _config_error(f"--penalties must be finite numbers >= 0, got {s['penalties']}")
    s["penalties"] = sorted({float(p) for p in s["penalties"]})
    unknown = [m for m in s["methods"] if m not in METHODS]
    if unknown:
        raise _config_error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    s["methods"] = list(dict.fromkeys(s["methods"]))
    if args.min_sparsity is not None and not 0 <= args.min_sparsity <= 1:
        raise _config_error(f"--min-sparsity must be in [0, 1], got {args.min_sparsity}")
    # Data: the sweep's own patches when one is given (the VAEs' data), else the preset's size.
    sweep = _check_sweep(args.sweep)
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
    sweep, gaps = _check_sweep(args.sweep), _check_gaps(args.gap)
    out = Path(args.out or f"sparse/{args.preset}")
    if out.exists() and not out.is_dir():
        raise _config_error(f"--out {out} exists and is not a directory")
    identity = _identity(settings, data)
    settings_path = out / SPARSE_SETTINGS
    if settings_path.is_file():
        saved = json.loads(settings_path.read_text()).get("identity")
        if saved != identity:
            diff = sorted(k for k in set(saved or {}) | set(identity) if (saved or {}).get(k) != identity.get(k))
            raise _config_error(f"{out} holds sparse-coding results of other settings (differing: {', '.join(diff)}); "
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
                                     scale_lr=settings["scale_lr"])
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


# ------------------------------------------------------------------ poissonvae fig5b
def cmd_fig5b(args: argparse.Namespace) -> int:
    sweep, gaps = _check_sweep(args.sweep), _check_gaps(args.gap)
    if args.min_sparsity is not None and not 0 <= args.min_sparsity <= 1:
        raise _config_error(f"--min-sparsity must be in [0, 1], got {args.min_sparsity}")
    sparse = None
    if args.sparse is not None:
        sparse = read_sparse_results(Path(args.sparse))
        if sparse is None:
            raise _config_error(f"--sparse {args.sparse}: no {SPARSE_RESULTS} there (run `poissonvae sparse` first)")
    if sparse is None and sweep is None and not gaps:
        raise _config_error("give at least one of --sparse DIR, --sweep DIR, --gap PATH")
    if args.out:
        out = Path(args.out)
    elif args.sparse:
        out = Path(args.sparse)
    elif sweep is not None:
        out = sweep / "figures"
    else:
        raise _config_error("--out DIR is needed when only --gap is given")
    K = args.K
    if K is None and sparse is not None and "K" in sparse and sparse["K"].nunique() == 1:
        K = int(sparse["K"].iloc[0])
    write_fig5b(out, sparse, sweep, gaps, K=K if K is not None else 512, min_sparsity=args.min_sparsity,
                paper=not args.no_paper)
    return 0


# ------------------------------------------------------------------ poissonvae gap
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


def _figure_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("figure and table (P-VAE Fig. 5b)")
    g.add_argument("--sweep", metavar="SWEEP_DIR", help="draw this sweep's VAEs (its results.parquet, averaged over "
                   "seeds; one marker per family across beta)")
    g.add_argument("--gap", nargs="+", metavar="PATH",
                   help="amortization-gap curves: CSVs written by `poissonvae gap`, or run directories holding "
                        "gap_*.csv (their encoder is drawn as an open circle)")
    g.add_argument("--min-sparsity", metavar="S", type=float, default=MIN_SPARSITY,
                   help="best-model rule: lowest MSE among models with at least this lifetime sparsity (about the "
                        "paper's best models' .917-.961)")
    g.add_argument("--no-paper", action="store_true", help="do not draw the paper's best models")


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
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _figure_args(p)
    add_data_args(p)
    p.set_defaults(func=cmd_sparse)

    p = sub.add_parser(
        "fig5b", formatter_class=_Formatter, help="draw Fig. 5b and the best-model table from saved results",
        description=_wrap(
            "Draw P-VAE Fig. 5b (MSE against lifetime sparsity) from files only: the LCA/ISTA/FISTA curves of "
            "`poissonvae sparse`, the VAEs of a sweep (results.parquet), and amortization-gap curves of "
            "`poissonvae gap`. Writes fig5b.png/.pdf/.csv and best_models.csv/.md (best model per method by the "
            "rule of --min-sparsity, beside the paper's). Nothing is retrained."),
        epilog="example:\n  poissonvae fig5b --sparse sparse/quick --sweep sweeps/quick "
               "--gap sweeps/quick/runs/poisson_K512_beta1_seed0")
    p.add_argument("--sparse", metavar="DIR", help="a folder written by `poissonvae sparse`")
    p.add_argument("--K", metavar="K", type=int,
                   help="latent size of the VAE points (default: the sparse table's K, else 512)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: --sparse DIR, else SWEEP_DIR/figures)")
    _figure_args(p)
    p.set_defaults(func=cmd_fig5b)

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

