"""P-VAE Fig. 5b (MSE against lifetime sparsity) and the best-model table.

Both take a DataFrame with at least ``method``, ``mse`` and
``lifetime_sparsity`` columns (the output of :mod:`.experiments`, to which VAE
rows measured with :mod:`poissonvae.metrics` can be appended).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

# Best models of P-VAE Fig. 5b (van Hateren, K = 512), as quoted in issue #5:
# method -> (lifetime sparsity, MSE); NaN where the figure's value is not quoted.
PAPER_BEST: dict[str, tuple[float, float]] = {
    "lca": (0.917, 50.17),
    "ista": (0.961, 86.85),
    "pvae conv|lin": (0.94, float("nan")),
}


def fig5b(df: pd.DataFrame, out_png: str | Path, paper: bool = True, title: str = "") -> list[Path]:
    """MSE (y) against lifetime sparsity (x), one marker-and-line series per
    ``method`` (points joined in order of sparsity), the paper's best models as
    open stars when ``paper``. Writes ``out_png`` and the same name with
    ``.pdf``; returns both paths."""
    for col in ("method", "mse", "lifetime_sparsity"):
        if col not in df.columns:
            raise ValueError(f"fig5b needs a {col!r} column; got {list(df.columns)}")
    fig, ax = plt.subplots(figsize=(5.0, 4.0))
    for method, group in df.groupby("method", sort=True):
        g = group.sort_values("lifetime_sparsity")
        ax.plot(g["lifetime_sparsity"], g["mse"], marker="o", ms=4, lw=1.2, label=str(method))
    if paper:
        for method, (s, mse) in PAPER_BEST.items():
            if np.isfinite(mse):
                ax.plot([s], [mse], marker="*", ms=11, mfc="none", ls="none", label=f"{method} (paper)")
    ax.set_xlabel("lifetime sparsity s (P-VAE eq. 5)")
    ax.set_ylabel("MSE (sum over pixels)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_png, out_png.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def best_models(df: pd.DataFrame, min_sparsity: float | None = None) -> pd.DataFrame:
    """Per ``method``, the row with the lowest ``mse`` among rows with
    ``lifetime_sparsity >= min_sparsity`` (all rows if None), beside the paper's
    best model of the same method where :data:`PAPER_BEST` has one
    (``paper_lifetime_sparsity``, ``paper_mse``; NaN otherwise)."""
    rows = df if min_sparsity is None else df[df["lifetime_sparsity"] >= min_sparsity]
    rows = rows.dropna(subset=["mse"]).reset_index(drop=True)  # concatenated frames repeat labels
    best = rows.loc[rows.groupby("method")["mse"].idxmin()].reset_index(drop=True)
    ref = best["method"].map(lambda m: PAPER_BEST.get(str(m), (np.nan, np.nan)))
    best["paper_lifetime_sparsity"] = [r[0] for r in ref]
    best["paper_mse"] = [r[1] for r in ref]
    return best
