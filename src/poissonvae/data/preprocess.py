"""Per-image preprocessing: whitening and local contrast normalisation.

All functions take and return one 2-D float image of shape (H, W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .images import DataError

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = [
    "radial_frequency",
    "whitening_filter",
    "whiten",
    "gaussian_kernel",
    "local_contrast_normalize",
    "preprocess_image",
]


def _as_2d(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"expected a 2-D image, got shape {arr.shape}")
    return arr


def radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) radial spatial frequency sqrt(fx^2 + fy^2) in cycles/pixel.

    Built with ``np.fft.fftfreq`` on each axis, i.e. in the UNSHIFTED layout
    of ``np.fft.fft2`` (DC at [0, 0], Nyquist = 0.5).
    """
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    return np.sqrt(fx**2 + fy**2)


# REFERENCE: Olshausen & Field (1997) whitening filter R(f) = f exp(-(f/f0)^n):
# the factor f flattens the ~1/f amplitude spectrum of natural images and the
# exponential rolls off the highest frequencies (noise, aliasing).
def whitening_filter(shape: tuple[int, int], f0: float = 0.5, n: float = 4.0) -> np.ndarray:
    """(H, W) filter R(f) = f exp(-(f/f0)^n) in the unshifted FFT layout."""
    f = radial_frequency(shape)
    return f * np.exp(-((f / f0) ** n))


def whiten(img: np.ndarray, f0: float = 0.5, n: float = 4.0) -> np.ndarray:
    """Whiten a (H, W) image; returns a (H, W) float64 image.

    The image mean is subtracted, its 2-D FFT multiplied by
    R(f) = f exp(-(f/f0)^n) with f the radial frequency in cycles/pixel, and
    the real part of the inverse FFT returned. The frequency grid comes from
    ``np.fft.fftfreq`` and so matches the UNSHIFTED spectrum of ``np.fft.fft2``.
    The authors' reference code applied an fftshift-ed (centred) grid to the
    unshifted spectrum, which swaps low and high frequencies and breaks the
    f <-> -f symmetry (the result is then not the real output of a real
    filter); we do not reproduce that bug. R(0) = 0, so the output has zero mean.
    Filtering is circular: expect small wrap-around artefacts at image borders.
    """
    x = _as_2d(img)
    x = x - x.mean()
    spectrum = np.fft.fft2(x) * whitening_filter(x.shape, f0, n)
    # R is real and even in f, so the inverse is real up to rounding error.
    return np.fft.ifft2(spectrum).real


def _check_kernel_args(size: int, sigma: float) -> None:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    if not sigma > 0:
        raise ValueError(f"kernel sigma must be positive, got {sigma}")


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D factor g with gaussian_kernel == outer(g, g)."""
    _check_kernel_args(size, sigma)
    x = np.linspace(-1.0, 1.0, size)
    g = np.exp(-(x**2) / sigma)
    return g / g.sum()


# REFERENCE: the authors' LCN kernel is exp(-r^2 / sigma) with r the radius
# on np.linspace(-1, 1, size) in both axes (NOT exp(-r^2 / (2 sigma^2))).
def gaussian_kernel(size: int = 13, sigma: float = 0.5) -> np.ndarray:
    """(size, size) kernel exp(-r^2 / sigma) on a [-1, 1]^2 grid, summing to 1."""
    _check_kernel_args(size, sigma)
    x = np.linspace(-1.0, 1.0, size)
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    k = np.exp(-r2 / sigma)
    return k / k.sum()


def _smooth(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    # exp(-(x^2+y^2)/sigma) = exp(-x^2/sigma) exp(-y^2/sigma): the 2-D kernel is
    # separable, so two 1-D passes equal the 2-D convolution at ~size/2 the cost.
    out = ndimage.convolve1d(img, g, axis=0, mode="reflect")
    return ndimage.convolve1d(out, g, axis=1, mode="reflect")


# REFERENCE: Jarrett et al. (2009) "What is the best multi-stage architecture
# for object recognition?", local subtractive + divisive normalisation.
def local_contrast_normalize(img: np.ndarray, size: int = 13, sigma: float = 0.5) -> np.ndarray:
    """Local contrast normalisation of a (H, W) image; returns (H, W) float64.

    Subtractive then divisive normalisation (Jarrett et al. 2009):
    v = img - k * img (k = gaussian_kernel, '*' = same-size convolution with
    reflect boundaries); s = sqrt(k * v^2); output = v / max(s, mean(s)).
    Dividing by at least the image-average s avoids amplifying flat regions.
    The result is invariant to scaling (and offsetting) of the input.
    """
    x = _as_2d(img)
    g = _gaussian_1d(size, sigma)
    centred = x - _smooth(x, g)
    # clip: rounding can make the smoothed square very slightly negative.
    local_std = np.sqrt(np.clip(_smooth(centred**2, g), 0.0, None))
    floor = float(local_std.mean())
    if not floor > 0:
        raise DataError("local contrast normalisation failed: image has no contrast")
    return centred / np.maximum(local_std, floor)


def preprocess_image(img: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """lcn(whiten(img)) with the parameters in ``cfg``; (H, W) -> (H, W)."""
    white = whiten(img, cfg.whiten_f0, cfg.whiten_n)
    return local_contrast_normalize(white, cfg.lcn_size, cfg.lcn_sigma)
