"""On-disk cache of prepared patch sets (``.npz``, written atomically)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import DataConfig, is_digit_source

if TYPE_CHECKING:
    from .patches import PatchSet

__all__ = ["cache_path", "load_cache", "save_cache"]

log = logging.getLogger(__name__)


def cache_path(cfg: DataConfig) -> Path:
    """Cache file for ``cfg``: ``{cache_dir}/patches-{cache_key}.npz``."""
    return Path(cfg.cache_dir).expanduser() / f"patches-{cfg.cache_key()}.npz"


def _core_config(cfg: DataConfig) -> dict[str, object]:
    d = cfg.to_dict()
    d.pop("cache_dir")
    return d


def load_cache(path: Path, cfg: DataConfig) -> PatchSet | None:
    """Read a cached PatchSet; None if it is missing, unreadable or inconsistent."""
    from .patches import PatchSet  # local import: patches imports this module

    if not path.is_file():
        return None
    d = cfg.patch_size**2
    try:
        with np.load(path, allow_pickle=False) as z:
            ps = PatchSet(
                train=z["train"],
                val=z["val"],
                train_images=[str(s) for s in z["train_images"]],
                val_images=[str(s) for s in z["val_images"]],
                mean=float(z["mean"]),
                std=float(z["std"]),
                patch_size=int(z["patch_size"]),
            )
            stored = json.loads(str(z["config"]))
        stored.pop("cache_dir", None)
        if is_digit_source(cfg.source):  # n_train/n_val are upper limits for digits
            sizes_ok = 1 <= len(ps.train) <= cfg.n_train and 1 <= len(ps.val) <= cfg.n_val
        else:
            sizes_ok = len(ps.train) == cfg.n_train and len(ps.val) == cfg.n_val
        ok = (
            stored == _core_config(cfg)
            and sizes_ok
            and ps.train.ndim == 2 and ps.train.shape[1] == d
            and ps.val.ndim == 2 and ps.val.shape[1] == d
            and ps.train.dtype == np.float32
            and ps.val.dtype == np.float32
        )
    except Exception as exc:  # corrupt/truncated file: recompute rather than crash
        log.warning("ignoring unreadable patch cache %s: %s", path, exc)
        return None
    if not ok:
        log.warning("ignoring inconsistent patch cache %s", path)
        return None
    return ps


def save_cache(path: Path, ps: PatchSet, cfg: DataConfig) -> None:
    """Write atomically (temp file in the same folder + os.replace)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".patches-", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        log.warning("cannot write patch cache %s: %s", path, exc)
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                train=ps.train,
                val=ps.val,
                train_images=np.array(ps.train_images, dtype=str),
                val_images=np.array(ps.val_images, dtype=str),
                mean=np.float64(ps.mean),
                std=np.float64(ps.std),
                patch_size=np.int64(ps.patch_size),
                config=np.array(json.dumps(cfg.to_dict(), sort_keys=True)),
            )
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if not isinstance(exc, OSError):
            raise
        # e.g. disk full: the patches are still valid, only caching failed.
        log.warning("cannot write patch cache %s: %s", path, exc)
