"""Image-disjoint train/validation split, patch sampling, z-scoring and caching."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from .cache import cache_path, load_cache, save_cache
from .config import DataConfig, is_digit_source
from .images import DataError, load_images
from .preprocess import preprocess_image

__all__ = [
    "PatchSet",
    "split_images",
    "sample_patches",
    "prepare_patches",
    "validate_patches",
    "load_patch_file",
    "cache_path",
]


@dataclass
class PatchSet:
    """Prepared, z-scored patches.

    train: (n_train, P*P) float32; val: (n_val, P*P) float32, drawn from the
    disjoint image sets ``train_images`` / ``val_images``. ``mean``/``std`` are
    the scalar z-score statistics (computed on the raw training patches).
    """

    train: np.ndarray
    val: np.ndarray
    train_images: list[str]
    val_images: list[str]
    mean: float
    std: float
    patch_size: int

    def tensors(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) as float32 tensors of shapes (n_train, P*P), (n_val, P*P).

        On CPU (device None/"cpu") the tensors share memory with the arrays.
        """
        train = torch.from_numpy(np.ascontiguousarray(self.train, dtype=np.float32))
        val = torch.from_numpy(np.ascontiguousarray(self.val, dtype=np.float32))
        return train.to(device), val.to(device)


def split_images(
    names: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split image names into disjoint, non-empty (train, val) lists (each sorted).

    The sorted names are permuted with ``np.random.default_rng(seed)``; the first
    max(1, round(val_fraction * n)) (capped at n - 1) become validation images.
    """
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise DataError("image names must be unique to split by image")
    n = len(ordered)
    if n < 2:
        raise DataError(f"need at least 2 images for an image-disjoint split, got {n}")
    train_idx, val_idx = split_samples(n, val_fraction, seed)
    return sorted(ordered[i] for i in train_idx), sorted(ordered[i] for i in val_idx)


def split_samples(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a disjoint (train, val) split of ``n`` samples, both in a seeded random order.

    ``max(1, round(val_fraction * n))`` (at most ``n - 1``) samples go to
    validation; the permutation is ``np.random.default_rng(seed).permutation(n)``.
    """
    if n < 2:
        raise DataError(f"need at least 2 samples to split into train and validation, got {n}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


def _check_size(img: np.ndarray, label: str, patch_size: int) -> None:
    h, w = img.shape
    if h < patch_size or w < patch_size:
        raise DataError(
            f"image {label} is {h}x{w}, smaller than the patch size {patch_size}x{patch_size}"
        )


def sample_patches(
    images: Sequence[np.ndarray],
    n: int,
    patch_size: int,
    rng: np.random.Generator,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Draw ``n`` random patches -> (n, patch_size**2) float32.

    Each patch picks an image with probability proportional to its number of
    valid top-left positions (so every position of every image is equally
    likely), then a uniform top-left corner. Rows are in random order.
    """
    if not images:
        raise DataError("no images to sample patches from")
    labels = list(names) if names is not None else [f"#{i}" for i in range(len(images))]
    p = patch_size
    for img, label in zip(images, labels):
        _check_size(img, label, p)
    counts = np.array([(h - p + 1) * (w - p + 1) for h, w in (im.shape for im in images)], float)
    which = rng.choice(len(images), size=n, p=counts / counts.sum())
    out = np.empty((n, p * p), dtype=np.float32)
    for i, img in enumerate(images):
        idx = np.flatnonzero(which == i)
        if idx.size == 0:
            continue
        rows = rng.integers(0, img.shape[0] - p + 1, size=idx.size)
        cols = rng.integers(0, img.shape[1] - p + 1, size=idx.size)
        windows = sliding_window_view(img, (p, p))  # (H-p+1, W-p+1, p, p) view
        out[idx] = windows[rows, cols].reshape(idx.size, p * p)
    return out


def validate_patches(x: np.ndarray | torch.Tensor, patch_size: int) -> None:
    """Raise DataError unless ``x`` is a non-empty finite (N, patch_size**2) array."""
    shape = tuple(x.shape)
    d = patch_size * patch_size
    if len(shape) != 2:
        raise DataError(f"expected a 2-D array of patches (N, {d}), got shape {shape}")
    if shape[1] != d:
        raise DataError(
            f"expected patches of {patch_size}x{patch_size} = {d} values, got {shape[1]} "
            f"(array shape {shape})"
        )
    if shape[0] == 0:
        raise DataError("patch array is empty (0 rows)")
    if isinstance(x, torch.Tensor):
        if not (x.dtype.is_floating_point or x.dtype.is_complex):
            x = x.double()
        n_bad = int((~torch.isfinite(x)).sum().item())
    else:
        arr = np.asarray(x)
        if not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"patch array must be numeric, got dtype {arr.dtype}")
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if n_bad:
        raise DataError(f"patch array contains {n_bad} non-finite values (NaN/Inf)")


def load_patch_file(path: str | os.PathLike[str], patch_size: int = 16) -> np.ndarray:
    """Load a user's .npy array of patches (N, P*P), validate it -> float32."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # missing file, pickled object array, bad header ...
        raise DataError(f"cannot load patch file {path}: {exc}") from exc
    if not isinstance(arr, np.ndarray):  # e.g. an .npz archive
        arr.close()
        raise DataError(f"{path}: expected a single .npy array, got {type(arr).__name__}")
    validate_patches(arr, patch_size)
    return arr.astype(np.float32, copy=False)


def prepare_patches(cfg: DataConfig, progress: bool = False) -> PatchSet:
    """Images -> whiten -> LCN -> patches -> z-score -> PatchSet, cached on disk.

    The config is validated before anything is loaded. Images are split into
    disjoint train/validation sets BEFORE sampling, so no validation patch
    shares an image with a training patch. Z-scoring uses ONE scalar mean and
    std over all pixels of all training patches (the paper only says
    "z-score"), applied to both splits. A result is cached at
    :func:`cache_path`; an identical config reuses it, a corrupt cache file is
    recomputed and overwritten.

    Digit sources (``"digits"``, ``"mnist:<folder>"``) take another path, with
    the same cache: :func:`poissonvae.data.digits.prepare_digits`.
    """
    cfg.validate()
    if is_digit_source(cfg.source):
        from .digits import prepare_digits

        return prepare_digits(cfg)
    path = cache_path(cfg)
    cached = load_cache(path, cfg)
    if cached is not None:
        return cached

    p = cfg.patch_size
    named = load_images(cfg.source)
    for name, img in named:  # fail fast, before the expensive preprocessing
        _check_size(img, name, p)
    images = dict(named)
    train_names, val_names = split_images(list(images), cfg.val_fraction, cfg.seed)

    order: Iterable[str] = train_names + val_names
    if progress:
        from tqdm.auto import tqdm

        order = tqdm(order, desc="preprocessing images", unit="img")
    processed = {name: preprocess_image(images[name], cfg) for name in order}

    rng = np.random.default_rng(cfg.seed)
    train = sample_patches([processed[k] for k in train_names], cfg.n_train, p, rng, train_names)
    val = sample_patches([processed[k] for k in val_names], cfg.n_val, p, rng, val_names)

    mean = float(train.mean(dtype=np.float64))
    std = float(train.std(dtype=np.float64))
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise DataError(f"cannot z-score training patches: mean={mean}, std={std}")
    for arr in (train, val):  # in place, float32: avoids a float64 copy
        arr -= np.float32(mean)
        arr /= np.float32(std)
    validate_patches(train, p)
    validate_patches(val, p)

    ps = PatchSet(train, val, train_names, val_names, mean, std, p)
    save_cache(path, ps, cfg)
    return ps
