"""Weights and training state in safetensors files: no code runs when loading.

``weights.safetensors`` holds the model's parameters and buffers;
``state.safetensors`` the optimiser moments and RNG state needed to resume.
Both carry metadata that identifies them as this library's, with the model's
family, architecture (files written before ``arch`` existed are lin|lin) and
shape, and loading checks every key and shape before touching the
model, so a corrupt, truncated or foreign file gives a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

FORMAT = "poissonvae"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, foreign, or does not fit the model."""


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _read(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{kind} checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({e})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (metadata format={metadata.get('format')!r})")
    if metadata.get("kind") != kind:
        raise CheckpointError(f"{path} holds {metadata.get('kind')!r}, expected {kind!r}")
    return tensors, metadata


def _model_meta(model) -> dict[str, str]:
    cfg = model.cfg
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": cfg.family,
        "arch": getattr(cfg, "arch", "lin|lin"),
        "K": str(cfg.K),
        "input_dim": str(cfg.input_dim),
        "n_models": str(model.n_models),
    }


def save_weights(model, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Save a stacked model's (:class:`~poissonvae.models.LinearVAE`, :class:`~poissonvae.conv.ConvVAE`)
    parameters and buffers."""
    meta = {**_model_meta(model), "kind": "weights", **(extra or {})}
    _atomic_save(dict(model.state_dict()), Path(path), meta)


def _check_fits(model, tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> None:
    want = _model_meta(model)
    meta = {"arch": "lin|lin", **meta}  # written before arch existed: lin|lin was the only one
    for key in ("arch", "family", "K", "input_dim", "n_models"):
        if meta.get(key) != want[key]:
            raise CheckpointError(f"{path} was saved for {key}={meta.get(key)!r}, the model has {key}={want[key]!r}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the model: missing {missing}, unexpected {unexpected}")
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(tensors[k].shape)}, expected {tuple(v.shape)}")
        if not torch.isfinite(tensors[k]).all():
            raise CheckpointError(f"{path}: tensor {k!r} contains NaN or Inf")


def load_weights(model, path: str | Path) -> None:
    """Load weights into ``model`` after checking that they are ours and fit it."""
    path = Path(path)
    tensors, meta = _read(path, "weights")
    _check_fits(model, tensors, meta, path)
    model.load_state_dict(tensors)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a weights file (checked to be ours), without a model."""
    return _read(Path(path), "weights")


def save_state(model, optimizer, generator: torch.Generator, progress: dict, path: str | Path) -> None:
    """Save what resuming needs in one file, written atomically: the model's
    weights, optimiser moments, RNG state and progress counters."""
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.generator": generator.get_state()}
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    meta = {
        **_model_meta(model),
        "kind": "state",
        # a captured step keeps its learning rate in a tensor (training.CapturedStep)
        "param_groups": json.dumps([{k: float(v) if torch.is_tensor(v) else v for k, v in g.items()}
                                    for g in opt["param_groups"]]),
        "progress": json.dumps(progress),
        "rng_device": generator.device.type,
    }
    _atomic_save(tensors, Path(path), meta)


# bytes of a generator's state per device type: a CPU Mersenne Twister, a CUDA Philox seed and offset
_RNG_STATE_BYTES = {"cpu": 5056, "cuda": 16}


def _restore_generator(generator: torch.Generator, rng: torch.Tensor, meta: dict[str, str], path: Path) -> None:
    """Restore the RNG state, or, for a run that moves to another kind of device
    (trained on a GPU, resumed on a CPU or back), seed the new device's generator
    from the saved state: the state of one kind cannot be set on the other. The
    resumed run is then deterministic (the same checkpoint gives the same seed)
    but draws other random numbers than the uninterrupted run would; the exact
    estimator draws none."""
    saved = meta.get("rng_device") or next((d for d, n in _RNG_STATE_BYTES.items() if n == rng.numel()), None)
    here = generator.device.type
    if saved is not None and saved != here:
        seed = int.from_bytes(hashlib.sha256(rng.contiguous().numpy().tobytes()).digest()[:8], "little") >> 1
        generator.manual_seed(seed)
        warnings.warn(f"{path}: the run's random-number state is from a {saved} generator and this run is on "
                      f"{here}; its generator was seeded from that state instead (sampling estimators draw "
                      f"other numbers than an uninterrupted run)", stacklevel=3)
        return
    generator.set_state(rng)


def load_state(model, optimizer, generator: torch.Generator, path: str | Path) -> dict:
    """Restore model weights, optimiser and RNG state; returns the progress counters."""
    path = Path(path)
    tensors, meta = _read(path, "state")
    weights = {k[len("model."):]: tensors.pop(k) for k in list(tensors) if k.startswith("model.")}
    _check_fits(model, weights, meta, path)
    try:
        groups = json.loads(meta["param_groups"])
        progress = json.loads(meta["progress"])
        _restore_generator(generator, tensors.pop("rng.generator"), meta, path)
    except (KeyError, json.JSONDecodeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: incomplete training state ({e})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        model.load_state_dict(weights)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimiser state does not fit the model ({e})") from None
    return progress
