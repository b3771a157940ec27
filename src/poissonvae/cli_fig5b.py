"""``poissonvae fig5b`` and ``gap``: P-VAE Fig. 5b and the best-model table from files
on disk, and the amortization gap (iterative sparse coding on a trained VAE's
dictionary). ``poissonvae sparse`` (:mod:`.cli_sparse`) writes the tables drawn here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import _Formatter, _wrap

# P-VAE paper (REFERENCE.md): best LCA MSE 50.17 at lifetime sparsity .917,
# ISTA 86.85 at .961; the conv|lin P-VAE reaches lifetime sparsity .94.
PAPER = "paper (van Hateren, K = 512): LCA MSE 50.17 @ s = .917; ISTA 86.85 @ s = .961; P-VAE conv|lin s = .94"

SPARSE_RESULTS = "sparse_results.csv"  # written by `poissonvae sparse`
FIG5B, BEST = "fig5b.png", "best_models"
MIN_SPARSITY = 0.9  # = sparse_coding.figures.MIN_SPARSITY (not imported: keeps `--help` free of matplotlib)


def config_error(msg: str):
    from .config import ConfigError

    return ConfigError(msg)


# ------------------------------------------------------------------ reading inputs
def check_sweep(sweep: str | None) -> Path | None:
    if sweep is None:
        return None
    path = Path(sweep)
    if not (path / "results.parquet").is_file():
        raise config_error(f"--sweep {path}: no results.parquet there (a directory written by `poissonvae sweep`)")
    return path


def check_gaps(paths: list[str] | None) -> list[Path]:
    """Each --gap is a CSV written by `poissonvae gap` or a run directory holding gap_*.csv."""
    out = []
    for p in paths or []:
        path = Path(p)
        if path.is_dir():
            if not sorted(path.glob("gap_*.csv")):
                raise config_error(f"--gap {path}: no gap_*.csv in that directory; run `poissonvae gap {path}` first")
        elif not path.is_file():
            raise config_error(f"--gap {path}: no such file or directory")
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
                raise config_error(f"{csv} is not a gap table (written by `poissonvae gap`): it lacks {missing}")
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
        raise config_error(f"{path} is not a table written by `poissonvae sparse`: it lacks {missing}")
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
        raise config_error("nothing to draw: give --sparse DIR, --sweep DIR or --gap PATH")
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


# ------------------------------------------------------------------ poissonvae fig5b
def cmd_fig5b(args: argparse.Namespace) -> int:
    sweep, gaps = check_sweep(args.sweep), check_gaps(args.gap)
    if args.min_sparsity is not None and not 0 <= args.min_sparsity <= 1:
        raise config_error(f"--min-sparsity must be in [0, 1], got {args.min_sparsity}")
    sparse = None
    if args.sparse is not None:
        sparse = read_sparse_results(Path(args.sparse))
        if sparse is None:
            raise config_error(f"--sparse {args.sparse}: no {SPARSE_RESULTS} there (run `poissonvae sparse` first)")
    if sparse is None and sweep is None and not gaps:
        raise config_error("give at least one of --sparse DIR, --sweep DIR, --gap PATH")
    if args.out:
        out = Path(args.out)
    elif args.sparse:
        out = Path(args.sparse)
    elif sweep is not None:
        out = sweep / "figures"
    else:
        raise config_error("--out DIR is needed when only --gap is given")
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


def figure_args(p: argparse.ArgumentParser) -> None:
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


def add_fig5b_commands(sub) -> None:
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
    figure_args(p)
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

