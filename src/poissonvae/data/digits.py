"""28x28 digit images for the conv|conv experiments (P-VAE sec. 4, appendix C.1).

Two sources, both giving 28x28 images with pixel values in [0, 1] like MNIST
(the P-VAE paper's MNIST; no whitening, contrast normalisation or z-scoring):

* ``"digits"``: scikit-learn's shipped ``load_digits()``, 1,797 8x8 images with
  values 0..16, upsampled bilinearly to 28x28 and divided by 16. It needs no
  network access, so tests and laptops can run the digit experiments.
* ``"mnist:<folder>"``: real MNIST, read from ``train-images-idx3-ubyte`` and
  (if present) ``t10k-images-idx3-ubyte`` in ``<folder>``, each optionally
  gzipped (``.gz``). The IDX format is parsed here with numpy (:func:`read_idx`).

Splits. There are no large images to split by, so the split is by sample and
deterministic in ``DataConfig.seed``: scikit-learn's digits are permuted with
``np.random.default_rng(seed)`` and ``round(val_fraction * 1797)`` of them
(at least one, at most all but one) are held out. MNIST keeps its own split,
the training file for training and the t10k file for validation (as the P-VAE
paper does); without a t10k file the training file is split like the digits.
``n_train``/``n_val`` are upper limits: each split keeps its first ``n`` samples
in a seeded random order, or all of them if there are fewer.

Results go through the same ``.npz`` cache as natural-image patches
(:mod:`poissonvae.data.cache`), keyed by the config and the source's identity.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .cache import cache_path, load_cache, save_cache
from .config import DIGIT_SIDE, DIGITS_SOURCE, MNIST_PREFIX, DataConfig, is_digit_source
from .images import DataError
from .patches import split_samples

__all__ = [
    "DIGITS_SOURCE",
    "MNIST_PREFIX",
    "DIGIT_SIDE",
    "MNIST_TRAIN",
    "MNIST_TEST",
    "is_digit_source",
    "load_sklearn_digits",
    "upsample_digits",
    "read_idx",
    "read_idx_images",
    "find_mnist_files",
    "load_mnist",
    "split_samples",
    "digit_source_identity",
    "prepare_digits",
]

MNIST_TRAIN = "train-images-idx3-ubyte"
MNIST_TEST = "t10k-images-idx3-ubyte"
SKLEARN_DIGIT_MAX = 16.0  # load_digits() pixel values are integers 0..16
MNIST_MAX = 255.0

# IDX data-type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ----------------------------------------------------------------- sklearn digits
def upsample_digits(images: np.ndarray, side: int = DIGIT_SIDE, max_value: float = SKLEARN_DIGIT_MAX) -> np.ndarray:
    """Bilinear upsampling of ``(N, h, w)`` images to ``(N, side, side)`` float32 in [0, 1].

    Values are divided by ``max_value``; bilinear weights are convex, so the
    result stays in [0, max_value] before scaling (clipped against rounding).
    """
    import torch
    import torch.nn.functional as F

    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise DataError(f"expected a non-empty stack of images (N, h, w), got shape {arr.shape}")
    up = F.interpolate(torch.from_numpy(arr)[:, None], size=(side, side), mode="bilinear", align_corners=False)
    return np.clip(up[:, 0].numpy() / np.float32(max_value), 0.0, 1.0)


def load_sklearn_digits() -> np.ndarray:
    """scikit-learn's 1,797 shipped digits as ``(1797, 28, 28)`` float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # (1797, 8, 8), values 0..16, shipped with the package
    return upsample_digits(images)


# ------------------------------------------------------------------------ MNIST
def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # bad gzip header, truncated stream, bad CRC
            raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from exc
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` is decompressed) into an array.

    Layout: magic number ``0x0000TTNN`` (two zero bytes, data-type code ``TT``,
    number of dimensions ``NN``), ``NN`` big-endian uint32 sizes, then the
    values in C order, big-endian. The file must hold exactly that many bytes.
    Raises DataError naming what is wrong.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header (4-byte magic number)")
    magic = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x0000TTNN with type TT in "
            f"{{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} and NN >= 1 dimensions); not an IDX file")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes, but its header promises {expected} "
            f"({' x '.join(map(str, dims))} values of {dtype.itemsize} byte(s) after a {header}-byte header); "
            "the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX file of unsigned-byte images (magic ``0x00000803``): ``(N, rows, cols)`` uint8."""
    arr = read_idx(path)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise DataError(f"{path}: expected unsigned-byte images (IDX magic 0x00000803, N x rows x cols), "
                        f"got {arr.ndim} dimension(s) of {arr.dtype}")
    if arr.shape[0] == 0:
        raise DataError(f"{path}: holds no images")
    return arr


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_mnist_files(folder: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """Paths of the training images and (or None) the t10k images in ``folder``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"MNIST folder does not exist or is not a directory: {folder}")
    train = _find(folder, MNIST_TRAIN)
    if train is None:
        raise DataError(f"no {MNIST_TRAIN} (or {MNIST_TRAIN}.gz) in MNIST folder {folder}")
    return train, _find(folder, MNIST_TEST)


def load_mnist(folder: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """MNIST training and (or None) t10k images, ``(N, 28, 28)`` float32 in [0, 1]."""
    out = []
    for path in find_mnist_files(folder):
        if path is None:
            out.append(None)
            continue
        images = read_idx_images(path)
        if images.shape[1:] != (DIGIT_SIDE, DIGIT_SIDE):
            raise DataError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, expected "
                            f"{DIGIT_SIDE}x{DIGIT_SIDE} (MNIST)")
        out.append(images.astype(np.float32) / np.float32(MNIST_MAX))
    return out[0], out[1]


# ---------------------------------------------------------------------- splits
def digit_source_identity(source: str) -> dict:
    """What the cache key records of a digit source: the scikit-learn version,
    or the MNIST files' (name, size, mtime_ns)."""
    if source == DIGITS_SOURCE:
        import sklearn

        return {"kind": "sklearn-digits", "sklearn": sklearn.__version__}
    files = []
    for path in find_mnist_files(source[len(MNIST_PREFIX):]):
        if path is not None:
            st = path.stat()
            files.append([path.name, st.st_size, st.st_mtime_ns])
    return {"kind": "mnist", "files": files}


def prepare_digits(cfg: DataConfig):
    """Digit images -> seeded split by sample -> flattened ``PatchSet`` ``(n, 784)``, cached.

    ``PatchSet.mean``/``std`` are 0 and 1 (no z-scoring: pixels stay in [0, 1]);
    ``train_images``/``val_images`` name the source of each split.
    """
    from .patches import PatchSet, validate_patches  # patches dispatches here

    cfg.validate()
    if not is_digit_source(cfg.source):
        raise ValueError(f"prepare_digits needs a digit source ('digits' or 'mnist:<folder>'), got {cfg.source!r}")
    path = cache_path(cfg)  # reads the source's identity: a missing MNIST folder fails here
    cached = load_cache(path, cfg)
    if cached is not None:
        return cached

    rng = np.random.default_rng(cfg.seed)
    if cfg.source == DIGITS_SOURCE:
        images = load_sklearn_digits()
        tr, va = split_samples(len(images), cfg.val_fraction, cfg.seed)
        train, val = images[tr], images[va]
        names = (f"sklearn digits: train split of {len(tr)} samples (seed {cfg.seed})",
                 f"sklearn digits: validation split of {len(va)} samples (seed {cfg.seed})")
    else:
        folder = cfg.source[len(MNIST_PREFIX):]
        train_path, test_path = find_mnist_files(folder)
        train, test = load_mnist(folder)
        if test is not None:  # MNIST's own split (P-VAE appendix C.1)
            train = train[rng.permutation(len(train))]
            val = test[rng.permutation(len(test))]
            names = (train_path.name, test_path.name)
        else:
            tr, va = split_samples(len(train), cfg.val_fraction, cfg.seed)
            train, val = train[tr], train[va]
            names = (f"{train_path.name}: train split of {len(tr)}", f"{train_path.name}: validation split of {len(va)}")
    d = DIGIT_SIDE * DIGIT_SIDE
    train = np.ascontiguousarray(train[: cfg.n_train].reshape(-1, d), dtype=np.float32)
    val = np.ascontiguousarray(val[: cfg.n_val].reshape(-1, d), dtype=np.float32)
    validate_patches(train, DIGIT_SIDE)
    validate_patches(val, DIGIT_SIDE)
    ps = PatchSet(train, val, [names[0]], [names[1]], 0.0, 1.0, DIGIT_SIDE)
    save_cache(path, ps, cfg)
    return ps
