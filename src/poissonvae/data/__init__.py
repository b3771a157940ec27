"""Data preparation for Poisson VAEs.

Flow: images (shipped with scikit-image/scikit-learn, or a folder) -> whiten ->
local contrast normalisation -> patches from an image-disjoint train/val split
-> scalar z-score -> cached ``.npz``. Entry point: :func:`prepare_patches`.
Digit sources (``"digits"``, ``"mnist:<folder>"``; 28x28 images in [0, 1], split
by sample) go through :mod:`poissonvae.data.digits` behind the same entry point.
"""

from .config import DataConfig
from .digits import load_sklearn_digits, prepare_digits, read_idx
from .images import SHIPPED_IMAGES, DataError, load_images
from .patches import PatchSet, load_patch_file, prepare_patches, validate_patches
from .preprocess import local_contrast_normalize, whiten

__all__ = [
    "DataConfig",
    "DataError",
    "PatchSet",
    "prepare_patches",
    "validate_patches",
    "load_patch_file",
    "load_images",
    "SHIPPED_IMAGES",
    "whiten",
    "local_contrast_normalize",
    "load_sklearn_digits",
    "prepare_digits",
    "read_idx",
]
