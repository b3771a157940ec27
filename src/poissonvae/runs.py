"""Run directories: one trained model, traceable to the exact settings that made it.

A run directory holds
    config.json            the RunConfig (written first)
    log.jsonl              one line of training metrics per epoch
    checkpoint.safetensors weights + optimiser + RNG while training (resume point)
    weights.safetensors    final weights
    metrics.json           validation metrics (written last: marks the run finished)
    dictionary.png         the learned dictionary, ordered by per-unit KL
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .checkpoint import save_weights
from .config import ConfigError, RunConfig
from .data import PatchSet, prepare_patches
from .evaluation import evaluate
from .figures import plot_dictionary
from .models import LinearVAE
from .training import Trainer

CONFIG, LOG, CHECKPOINT, WEIGHTS, METRICS, DICTIONARY = (
    "config.json", "log.jsonl", "checkpoint.safetensors", "weights.safetensors", "metrics.json", "dictionary.png")


def _json_safe(obj):
    """NaN/Inf are not JSON: write them as null (e.g. lifetime sparsity of a silent model)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / METRICS).is_file()


# Settings that say where or on what to compute, not what: a run may resume
# with another cache folder or device.
_NOT_IDENTITY = {("data", "cache_dir"), ("train", "device")}


def run_identity(cfg: RunConfig) -> dict:
    """The parts of a config that determine the result."""
    d = cfg.to_dict()
    return {sec: {k: v for k, v in vals.items() if (sec, k) not in _NOT_IDENTITY} for sec, vals in d.items()}


def check_run_dir(cfg: RunConfig, run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds this run; raises if it holds a different one."""
    cfg_path = run_dir / CONFIG
    if not cfg_path.exists():
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"{run_dir} exists and is not a directory")
        return False
    if run_identity(RunConfig.load(cfg_path)) != run_identity(cfg):
        raise ConfigError(
            f"{run_dir} already holds a run with a different config; choose another directory "
            f"or resume it with `poissonvae train --resume {run_dir}`")
    return True


def prepare_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Create ``run_dir`` with its config unless it already holds this run."""
    if not check_run_dir(cfg, run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG)


def _truncate_log(path: Path, epoch: int) -> None:
    """Drop log lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= epoch]
    path.write_text("".join(line + "\n" for line in keep))


def finish_run(model: LinearVAE, index: int, cfg: RunConfig, val, run_dir: Path, history: list[dict]) -> dict:
    """Evaluate model ``index`` of a stack, save its weights, figure and metrics."""
    metrics = {k: v[index] for k, v in evaluate(model, val, cfg.train.eval_batch_size, seed=cfg.train.seed).items()}
    single = LinearVAE(cfg.model, seeds=[cfg.train.seed])
    single.load_state_dict(model.select(index))
    save_weights(single, run_dir / WEIGHTS)
    dictionary = single.dictionary[0].detach().cpu().numpy()
    order = np.argsort(-np.asarray(metrics["per_unit_kl"]))
    plot_dictionary(dictionary, run_dir / DICTIONARY, order, title=f"{cfg.model.family}, K={cfg.model.K}, beta={cfg.train.beta}")
    metrics["final_train"] = {k: (v[index] if isinstance(v, list) else v) for k, v in history[-1].items()} if history else {}
    write_json(run_dir / METRICS, metrics)
    return metrics


def train_run(cfg: RunConfig, run_dir: str | Path, progress: bool = True, patches: PatchSet | None = None) -> dict:
    """Train (or resume, or return) the run that ``cfg`` describes in ``run_dir``.

    Everything is validated before any work; a finished run is not retrained.
    """
    cfg.validate()
    run_dir = Path(run_dir)
    if check_run_dir(cfg, run_dir) and is_finished(run_dir):
        return json.loads((run_dir / METRICS).read_text())
    patches = patches or prepare_patches(cfg.data, progress=progress)  # before writing anything
    prepare_run_dir(cfg, run_dir)
    train, val = patches.tensors()
    model = LinearVAE(cfg.model, seeds=[cfg.train.seed])
    trainer = Trainer(model, cfg.train, train)
    if (run_dir / CHECKPOINT).exists():
        trainer.load_state(run_dir / CHECKPOINT)
        _truncate_log(run_dir / LOG, trainer.epoch)

    def on_epoch(tr: Trainer, record: dict) -> None:
        with open(run_dir / LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        if tr.epoch % cfg.train.checkpoint_every == 0 or tr.epoch == tr.total_epochs:
            tr.save_state(run_dir / CHECKPOINT)

    history = trainer.fit(on_epoch=on_epoch, progress=progress)
    metrics = finish_run(trainer.model, 0, cfg, val, run_dir, history)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    return metrics
