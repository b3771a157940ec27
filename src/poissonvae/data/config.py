"""Configuration of the data-preparation stage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Bump when the preprocessing/sampling code changes in a way that alters the
# output for an unchanged config, so that stale caches are not reused.
PIPELINE_VERSION = 1

# Digit sources (see :mod:`poissonvae.data.digits`): 28x28 images in [0, 1],
# used as they are (no whitening, contrast normalisation or z-scoring).
DIGITS_SOURCE = "digits"  # scikit-learn's shipped 8x8 digits, upsampled to 28x28
MNIST_PREFIX = "mnist:"  # "mnist:<folder>": MNIST IDX files in <folder>
DIGIT_SIDE = 28


def is_digit_source(source: str) -> bool:
    """Whether ``source`` names 28x28 digits rather than natural images."""
    return isinstance(source, str) and (source == DIGITS_SOURCE or source.startswith(MNIST_PREFIX))


@dataclass
class DataConfig:
    """Everything that determines the prepared patch arrays.

    ``source`` is ``"shipped"`` or a folder of natural images (whitened patches),
    or a digit source: ``"digits"`` (scikit-learn's digits upsampled to 28x28)
    or ``"mnist:<folder>"`` (MNIST IDX files); a folder literally named
    ``digits`` is ``"./digits"``. ``n_train``/``n_val`` are numbers of patches
    drawn; ``val_fraction`` is the fraction of IMAGES held out for validation
    (at least one image per split). For digits, which are whole images, not
    patches, ``n_train``/``n_val`` are upper limits on the samples kept and the
    split is by sample (see :func:`poissonvae.data.digits.prepare_digits`).
    ``whiten_f0``/``whiten_n`` parametrise R(f) = f exp(-(f/f0)^n);
    ``lcn_size``/``lcn_sigma`` the local-contrast-normalisation kernel (both
    unused for digits).
    """

    source: str = "shipped"
    patch_size: int = 16
    n_train: int = 100_000
    n_val: int = 20_000
    val_fraction: float = 0.2
    seed: int = 0
    whiten_f0: float = 0.5
    whiten_n: float = 4.0
    lcn_size: int = 13
    lcn_sigma: float = 0.5
    cache_dir: str = ".cache/poissonvae"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        """Build from a dict; unknown keys raise ValueError, missing keys default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown DataConfig field(s): {', '.join(unknown)}; "
                f"known fields: {', '.join(sorted(known))}"
            )
        return cls(**d)

    def validate(self) -> None:
        """Raise ValueError naming the offending field for invalid values."""

        def bad(field: str, why: str) -> None:
            raise ValueError(f"DataConfig.{field}={getattr(self, field)!r} is invalid: {why}")

        if not isinstance(self.source, str) or not self.source:
            bad("source", 'must be "shipped", a folder path, "digits" or "mnist:<folder>"')
        if self.source.startswith(MNIST_PREFIX) and not self.source[len(MNIST_PREFIX):]:
            bad("source", 'must name the folder of the MNIST IDX files, e.g. "mnist:data/mnist"')
        for field in ("patch_size", "n_train", "n_val", "seed", "lcn_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                bad(field, "must be an integer")
        for field in ("val_fraction", "whiten_f0", "whiten_n", "lcn_sigma"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                bad(field, "must be a number")
        if self.patch_size < 2:
            bad("patch_size", "must be >= 2")
        if self.n_train < 1:
            bad("n_train", "must be >= 1")
        if self.n_val < 1:
            bad("n_val", "must be >= 1")
        if self.seed < 0:
            bad("seed", "must be >= 0")
        if not 0.0 < float(self.val_fraction) < 1.0:
            bad("val_fraction", "must be strictly between 0 and 1")
        for field in ("whiten_f0", "whiten_n", "lcn_sigma"):
            value = float(getattr(self, field))
            # `not value > 0` also rejects NaN.
            if not value > 0.0 or value == float("inf"):
                bad(field, "must be a positive finite number")
        if self.lcn_size < 1 or self.lcn_size % 2 == 0:
            bad("lcn_size", "must be a positive odd integer")
        if is_digit_source(self.source) and self.patch_size != DIGIT_SIDE:
            bad("patch_size", f"must be {DIGIT_SIDE} for the digit source {self.source!r} (28x28 images)")

    def source_identity(self) -> dict[str, Any]:
        """Identity of the input images, so that changed inputs change the key.

        Folder: sorted (name, size, mtime_ns) of supported files.
        Shipped: names of the shipped images found, plus package versions.
        """
        from .images import list_image_files, shipped_image_names

        if is_digit_source(self.source):
            from .digits import digit_source_identity

            return digit_source_identity(self.source)
        if self.source == "shipped":
            import skimage

            try:
                import sklearn

                sk_version = sklearn.__version__
            except ImportError:
                sk_version = None
            return {
                "kind": "shipped",
                "names": shipped_image_names(),
                "skimage": skimage.__version__,
                "sklearn": sk_version,
            }
        files = []
        for p in list_image_files(self.source):
            st = p.stat()
            files.append([p.name, st.st_size, st.st_mtime_ns])
        return {"kind": "folder", "files": files}

    def cache_key(self) -> str:
        """16-hex-digit hash of all fields except ``cache_dir`` plus the source identity."""
        payload = self.to_dict()
        payload.pop("cache_dir")
        payload["_source_identity"] = self.source_identity()
        payload["_pipeline_version"] = PIPELINE_VERSION
        blob = json.dumps(payload, sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]
