"""Data preparation for Poisson VAEs.

Flow: images (shipped with scikit-image/scikit-learn, or a folder) -> whiten ->
local contrast normalisation -> patches from an image-disjoint train/val split
-> scalar z-score -> cached ``.npz``. Entry point: :func:`prepare_patches`.
"""

from .config import DataConfig
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
]
