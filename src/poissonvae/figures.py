"""Figures drawn from saved results and weights only (never by retraining)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def tile_dictionary(dictionary: np.ndarray, order: np.ndarray | None = None, pad: int = 1) -> np.ndarray:
    """Arrange dictionary columns ``(D, K)`` as a square-ish mosaic of ``P x P`` tiles.

    Each tile is scaled by its own largest absolute value, so shape (not norm)
    is what shows; ``order`` picks and orders the columns (e.g. by KL).
    """
    D, K = dictionary.shape
    P = int(round(math.sqrt(D)))
    if P * P != D:
        raise ValueError(f"dictionary rows ({D}) are not a square patch")
    cols = dictionary[:, order] if order is not None else dictionary
    n = cols.shape[1]
    grid_c = int(math.ceil(math.sqrt(n)))
    grid_r = int(math.ceil(n / grid_c))
    mosaic = np.zeros((grid_r * (P + pad) + pad, grid_c * (P + pad) + pad))
    for i in range(n):
        tile = cols[:, i].reshape(P, P)
        tile = tile / (np.abs(tile).max() + 1e-12)
        r, c = divmod(i, grid_c)
        mosaic[pad + r * (P + pad) : pad + r * (P + pad) + P, pad + c * (P + pad) : pad + c * (P + pad) + P] = tile
    return mosaic


def plot_dictionary(dictionary: np.ndarray, path: str | Path, order: np.ndarray | None = None, title: str = "") -> None:
    """Save the dictionary mosaic as an image (PNG, or PDF by suffix)."""
    mosaic = tile_dictionary(dictionary, order)
    size = max(4.0, mosaic.shape[1] / 40)
    fig, ax = plt.subplots(figsize=(size, size * mosaic.shape[0] / mosaic.shape[1]))
    ax.imshow(mosaic, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.savefig(path, bbox_inches="tight", dpi=150)
    plt.close(fig)
