"""Loading grayscale natural images as 2-D float64 arrays.

Two sources are supported:

* ``"shipped"``: the natural photographs bundled with scikit-image (its
  ``skimage/data`` folder) and scikit-learn (``load_sample_images``). They need
  no network access, which keeps tests and CI hermetic.
* a folder path: every ``.png/.jpg/.jpeg/.tif/.tiff`` file plus van Hateren
  raw ``.iml`` files.

Every loader returns ``list[tuple[str, np.ndarray]]`` where each array has
shape ``(H, W)`` and dtype float64, sorted by name for determinism.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "SHIPPED_IMAGES",
    "SUPPORTED_SUFFIXES",
    "IML_SHAPE",
    "list_image_files",
    "shipped_image_names",
    "load_shipped",
    "load_folder",
    "load_images",
    "read_iml",
]

NamedImage = tuple[str, np.ndarray]


class DataError(ValueError):
    """Raised for any problem with the input images or patch arrays."""


# Names of the natural photographs that ship with scikit-image / scikit-learn.
# Synthetic or non-natural images (text, chessboard, microscopy, ...) are left
# out on purpose: the whitening filter assumes a roughly 1/f amplitude spectrum.
_SKIMAGE_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "brick": "brick.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "rocket": "rocket.jpg",
}
_SKLEARN_NAMES: tuple[str, ...] = ("china", "flower")
SHIPPED_IMAGES: tuple[str, ...] = tuple(_SKIMAGE_FILES) + _SKLEARN_NAMES

_RASTER_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SUPPORTED_SUFFIXES: tuple[str, ...] = _RASTER_SUFFIXES + (".iml",)

# REFERENCE: van Hateren & van der Schaaf (1998) natural image database:
# raw 1536 x 1024 pixel images (1024 rows x 1536 columns), big-endian uint16,
# no header.
IML_SHAPE: tuple[int, int] = (1024, 1536)


def _skimage_data_dir() -> Path:
    import skimage

    # Read files from the package folder directly: some ``skimage.data.<name>()``
    # functions go through pooch, which may try to download.
    return Path(os.path.dirname(skimage.__file__)) / "data"


def _sklearn_images_dir() -> Path:
    import sklearn.datasets

    return Path(os.path.dirname(sklearn.datasets.__file__)) / "images"


def _to_gray_float(img: np.ndarray, label: str) -> np.ndarray:
    """Convert an image of shape (H, W), (H, W, 1|2|3|4) to (H, W) float64."""
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    arr = np.asarray(img)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{label}: unsupported pixel type {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 2:  # gray + alpha: drop alpha
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        # rgb2gray rescales integer types to [0, 1] itself; alpha is dropped.
        arr = rgb2gray(arr[..., :3])
    elif arr.ndim == 2:
        # integer -> [0, 1]; float input is kept as is.
        arr = img_as_float(arr)
    else:
        raise DataError(
            f"{label}: expected a 2-D grayscale or RGB(A) image, got shape {arr.shape}"
        )
    return _check_image(np.asarray(arr, dtype=np.float64), label)


def _check_image(img: np.ndarray, label: str) -> np.ndarray:
    """Reject images with NaN/Inf or zero variance (they break normalisation)."""
    n_bad = int(np.size(img) - np.count_nonzero(np.isfinite(img)))
    if n_bad:
        raise DataError(f"{label}: image contains {n_bad} NaN/Inf pixel values")
    if img.size == 0 or float(np.ptp(img)) == 0.0:
        raise DataError(f"{label}: image is constant (zero variance)")
    return img


def read_iml(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a van Hateren ``.iml`` file -> (1024, 1536) float64 array."""
    path = Path(path)
    expected = 2 * IML_SHAPE[0] * IML_SHAPE[1]
    size = path.stat().st_size
    if size != expected:
        raise DataError(
            f"{path}: .iml file has {size} bytes, expected {expected} "
            f"(1536x1024 big-endian uint16, no header)"
        )
    raw = np.fromfile(path, dtype=">u2")
    return _check_image(raw.reshape(IML_SHAPE).astype(np.float64), str(path))


def list_image_files(path: str | os.PathLike[str]) -> list[Path]:
    """Supported image files directly inside ``path``, sorted by name.

    Raises DataError if the folder does not exist or holds no supported file.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder does not exist or is not a directory: {folder}")
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES),
        key=lambda p: p.name,
    )
    if not files:
        raise DataError(
            f"no supported images in folder {folder} "
            f"(supported suffixes: {', '.join(SUPPORTED_SUFFIXES)})"
        )
    return files


def _read_raster(path: Path) -> np.ndarray:
    """Decode a user image file with PIL (png/jpg) or tifffile (tif) -> array.

    Not skimage.io.imread: on a corrupt file imageio probes every plugin, which
    emits deprecation warnings and leaks file handles.
    """
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as im:
            if im.mode not in ("L", "LA", "RGB", "RGBA", "I", "I;16", "F"):
                im = im.convert("RGB")  # palette, CMYK, 1-bit, ...
            return np.array(im)
    except Exception as exc:  # decoders raise many types (OSError, ValueError, ...)
        raise DataError(f"cannot read image file {path}: {exc}") from exc


def _read_shipped(path: Path) -> np.ndarray:
    import skimage.io

    return np.asarray(skimage.io.imread(path))


def load_folder(path: str | os.PathLike[str]) -> list[NamedImage]:
    """Load every supported image in ``path`` as (file name, (H, W) float64)."""
    out: list[NamedImage] = []
    for f in list_image_files(path):
        if f.suffix.lower() == ".iml":
            img = read_iml(f)
        else:
            img = _to_gray_float(_read_raster(f), str(f))
        out.append((f.name, img))
    return out


def _shipped_sources() -> list[tuple[str, Path]]:
    """(name, file path) of each shipped photograph present in this install."""
    found: list[tuple[str, Path]] = []
    skdir = _skimage_data_dir()
    for name, fname in _SKIMAGE_FILES.items():
        if (skdir / fname).is_file():
            found.append((name, skdir / fname))
    try:
        sldir = _sklearn_images_dir()
        for name in _SKLEARN_NAMES:
            if (sldir / f"{name}.jpg").is_file():
                found.append((name, sldir / f"{name}.jpg"))
    except ImportError:  # scikit-learn is optional for this source
        pass
    if len(found) < 2:
        raise DataError(
            f"only {len(found)} shipped images found (need >= 2); "
            f"looked in {skdir} for {', '.join(SHIPPED_IMAGES)}"
        )
    return sorted(found)


def shipped_image_names() -> list[str]:
    """Names of the shipped photographs available in this install, sorted."""
    return [name for name, _ in _shipped_sources()]


def load_shipped() -> list[NamedImage]:
    """Load the shipped photographs as (name, (H, W) float64 in [0, 1])."""
    return [(name, _to_gray_float(_read_shipped(p), name)) for name, p in _shipped_sources()]


def load_images(source: str) -> list[NamedImage]:
    """``"shipped"`` -> :func:`load_shipped`; anything else is a folder path."""
    return load_shipped() if source == "shipped" else load_folder(source)
