"""Gather finished runs of a sweep into one table (Parquet) that pandas reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..dead_units import split_by_life
from ..families import FAMILIES
from ..runs import METRICS, is_finished
from .grid import SweepConfig, run_name

RESULTS = "results.parquet"
SCALARS = ("mse", "r2", "metabolic_cost", "proportion_zeros", "overall_performance", "recon", "kl",
           "neg_elbo", "lifetime_sparsity", "epochs", "train_seconds")
# dead units (dead_units.py): their share, and the proportion of zeros of dead and of alive units
UNIT_SPLIT = ("dead_fraction", "dead_zeros", "alive_zeros")


def collect(sweep: SweepConfig, sweep_dir: str | Path) -> pd.DataFrame:
    """One row per finished run of the grid, in grid order; unfinished runs are left out."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for cfg in sweep.runs():
        name = run_name(cfg)
        run_dir = sweep_dir / "runs" / name
        if not is_finished(run_dir):
            continue
        metrics = json.loads((run_dir / METRICS).read_text())
        row = {"family": cfg.model.family, "K": cfg.model.K, "beta": cfg.train.beta, "seed": cfg.train.seed,
               "run_dir": f"runs/{name}"}
        row.update({k: metrics.get(k) for k in SCALARS})
        row.update(_unit_split(cfg.model.family, metrics))
        rows.append(row)
    df = pd.DataFrame(rows, columns=["family", "K", "beta", "seed", "run_dir", *SCALARS, *UNIT_SPLIT])
    return df.astype({k: "float64" for k in (*SCALARS, *UNIT_SPLIT) if k != "epochs"})


def _unit_split(family: str, metrics: dict) -> dict:
    """Dead fraction and zeros of dead / alive units; NaN for families whose units
    share one KL (categorical) and for runs evaluated before per-unit zeros were kept."""
    kl = metrics.get("per_unit_kl")
    if kl is None or getattr(FAMILIES.get(family), "coupled_units", False):
        return dict.fromkeys(UNIT_SPLIT, None)
    return split_by_life(kl, metrics.get("unit_proportion_zeros"))


def write_results(df: pd.DataFrame, sweep_dir: str | Path) -> Path:
    path = Path(sweep_dir) / RESULTS
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path
