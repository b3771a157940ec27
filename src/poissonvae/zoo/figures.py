"""Figures of the model-zoo experiments (P-VAE Figs. 4, 5a, 7, 9, 10), from results and saved runs only.

Each function takes the experiment's results table (one row per run, with the
variant columns ``family, arch, estimator, temperature_end,
temperature_schedule``), writes PNG and PDF into ``out`` and returns the paths.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..checkpoint import read_weights
from ..figures import tile_dictionary
from ..paper_figures import _color, _legend, _save, label, plt
from ..runs import WEIGHTS
from .analysis import dead_threshold, percent_drop, unit_activity

_EST = {"exact": "EX", "mc": "MC", "st": "ST"}


def _archs(df: pd.DataFrame) -> list[str]:
    return [a for a in ("lin|lin", "conv|lin", "conv|conv") if a in set(df["arch"])]


def _families(df: pd.DataFrame) -> list[str]:
    from ..paper_figures import families

    return families(df)


def fig_estimators(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """P-VAE Fig. 7: percent drop of the validation negative ELBO against the best run, one dot per seed."""
    d = df.assign(drop=percent_drop(df))
    archs = _archs(d)
    fig, axes = plt.subplots(1, len(archs), figsize=(4.8 * len(archs), 3.8), layout="constrained", squeeze=False)
    fams = _families(d)
    for ax, arch in zip(axes[0], archs):
        sub = d[d["arch"] == arch]
        ticks, labelled = [], set()
        for fam in fams:
            for est in ("exact", "mc", "st"):
                g = sub[(sub["family"] == fam) & (sub["estimator"] == est)]
                if not len(g):
                    continue
                x = len(ticks)
                ticks.append(f"{_EST[est]}\n{fam[:4]}")
                jitter = np.linspace(-0.15, 0.15, len(g)) if len(g) > 1 else np.zeros(1)
                ax.scatter(x + jitter, g["drop"], color=_color(fam), s=18, zorder=3,
                           label=None if fam in labelled else label(fam))
                labelled.add(fam)
                ax.plot([x - 0.25, x + 0.25], [g["drop"].mean()] * 2, color="k", lw=1)
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_ylabel("drop of validation -ELBO vs best run (%)")
        ax.set_title(f"{arch} (lower is better)", fontsize=10)
        _legend(ax, fontsize=7)
    return _save(fig, out, "zoo_estimators")


def fig_dead_neurons(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """P-VAE Fig. 10: histogram of each family's per-unit KL (decoder norms for coupled
    units) with the dead-neuron threshold; first seed of each (family, arch)."""
    archs, fams = _archs(df), _families(df)
    fig, axes = plt.subplots(len(archs), len(fams), figsize=(3.3 * len(fams), 2.8 * len(archs)),
                             layout="constrained", squeeze=False)
    for r, arch in enumerate(archs):
        for c, fam in enumerate(fams):
            ax = axes[r][c]
            g = df[(df["arch"] == arch) & (df["family"] == fam)].sort_values("seed")
            if not len(g):
                ax.set_axis_off()
                continue
            values, what = unit_activity(g["run_dir"].iloc[0], fam)
            thr = dead_threshold(values)
            logs = np.log10(np.maximum(values, 1e-12))
            ax.hist(logs, bins=40, color=_color(fam), alpha=0.8)
            ax.axvline(math.log10(thr), color="k", ls="--", lw=1)
            ax.set_yscale("log")
            ax.set_xlabel(f"log10 {what}", fontsize=8)
            ax.set_title(f"{label(fam)} {arch}: {int((values <= thr).sum())} dead of {len(values)}", fontsize=9)
    return _save(fig, out, "zoo_dead_neurons")


def fig_dictionaries(df: pd.DataFrame, out: str | Path, max_units: int = 512) -> list[Path]:
    """P-VAE Fig. 4: lin|lin dictionaries side by side, units ordered by decreasing per-unit KL
    (decoder norm for coupled units), so the informative elements come first; first seed."""
    d = df[df["arch"] == "lin|lin"]
    fams = _families(d)
    if not fams:
        raise ValueError("no lin|lin runs to draw dictionaries from")
    cols = min(3, len(fams))
    rows = math.ceil(len(fams) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.4 * rows), layout="constrained", squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, fam in zip(axes.flat, fams):
        g = d[d["family"] == fam].sort_values("seed")
        run = g["run_dir"].iloc[0]
        values, _ = unit_activity(run, fam)
        tensors, _ = read_weights(Path(run) / WEIGHTS)
        phi = tensors["dictionary"][0].numpy()
        order = np.argsort(-values)[:max_units]
        dead = int((values <= dead_threshold(values)).sum())
        ax.imshow(tile_dictionary(phi, order), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(f"{label(fam)} (# dead neurons: {dead})", fontsize=10)
    return _save(fig, out, "zoo_dictionaries")


def fig_sparsity(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """P-VAE Fig. 5a: MSE vs lifetime sparsity across beta, mean over seeds; filled
    markers lin|lin, open markers conv|lin; each point annotated with its beta."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    for fam in _families(df):
        for arch, fill in (("lin|lin", True), ("conv|lin", False)):
            g = df[(df["family"] == fam) & (df["arch"] == arch)]
            if not len(g):
                continue
            m = g.groupby("beta")[["mse", "lifetime_sparsity"]].mean().reset_index().sort_values("beta")
            ax.plot(m["lifetime_sparsity"], m["mse"], "-", color=_color(fam), lw=1, alpha=0.6)
            ax.scatter(m["lifetime_sparsity"], m["mse"], s=36, zorder=3, edgecolors=_color(fam),
                       facecolors=_color(fam) if fill else "none", label=f"{label(fam)} {arch}")
            for _, r in m.iterrows():
                ax.annotate(f"{r['beta']:g}", (r["lifetime_sparsity"], r["mse"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("lifetime sparsity (P-VAE eq. 5)")
    ax.set_ylabel("MSE (sum over pixels)")
    ax.set_title("reconstruction vs sparsity across beta (numbers: beta)", fontsize=10)
    _legend(ax, fontsize=7, ncol=2)
    return _save(fig, out, "zoo_sparsity")


def fig_temperature(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """P-VAE Fig. 9: validation negative ELBO (z at T = 0) vs the final training temperature,
    for linear and exponential annealing (relaxed samples) and the hard forward pass (ST)."""
    archs = _archs(df)
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 3.8), layout="constrained", squeeze=False)
    styles = {("mc", "linear"): ("o-", "relaxed, linear anneal"), ("mc", "exponential"): ("s--", "relaxed, exp. anneal"),
              ("st", "linear"): ("^:", "hard forward (ST), linear anneal")}
    for ax, arch in zip(axes[0], archs):
        for (est, sched), (style, name) in styles.items():
            g = df[(df["arch"] == arch) & (df["estimator"] == est) & (df["temperature_schedule"] == sched)]
            if not len(g):
                continue
            m = g.groupby("temperature_end")["neg_elbo"].agg(["mean", "std"]).reset_index()
            ax.errorbar(m["temperature_end"], m["mean"], yerr=m["std"].fillna(0), fmt=style, capsize=2, label=name)
        ax.set_xscale("log")
        ax.set_xlabel(r"final temperature $T_\mathrm{final}$")
        ax.set_ylabel("validation -ELBO (lower is better)")
        ax.set_title(f"P-VAE {arch}", fontsize=10)
        _legend(ax, fontsize=7)
    return _save(fig, out, "zoo_temperature")
