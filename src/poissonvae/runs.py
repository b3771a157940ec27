"""Run directories: one trained model, traceable to the exact settings that made it.

A run directory holds
    config.json            the RunConfig (written first)
    log.jsonl              one line of training metrics per epoch
    checkpoint.safetensors weights + optimiser + RNG while training (resume point;
                           for a group trained together it lives in the group's folder,
                           beside group.json, the list of runs it holds)
    weights.safetensors    final weights
    metrics.json           validation metrics (written last: marks the run finished)
    dictionary.png         the learned dictionary, ordered by per-unit KL: Phi for a linear
                           decoder (lin|lin, conv|lin); for conv|conv, each unit's decoder
                           response dec(e_k) - dec(0) (see StackedVAE.decoder_atoms)
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
from .models import StackedVAE, build_model
from .training import Trainer

CONFIG, LOG, CHECKPOINT, WEIGHTS, METRICS, DICTIONARY, GROUP = (
    "config.json", "log.jsonl", "checkpoint.safetensors", "weights.safetensors", "metrics.json", "dictionary.png",
    "group.json")


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
_NOT_IDENTITY = {("data", "cache_dir"), ("train", "device"), ("train", "compile"), ("train", "cuda_graph")}


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


def finish_run(model: StackedVAE, index: int, cfg: RunConfig, metrics: dict, run_dir: Path, epochs: int,
               seconds: float | None = None) -> dict:
    """Save model ``index`` of a stack as a finished run: weights, dictionary figure, metrics."""
    single = build_model(cfg.model, seeds=[cfg.train.seed])
    single.load_state_dict(model.select(index))
    save_weights(single, run_dir / WEIGHTS)
    # Phi for a linear decoder; a conv decoder's response to each unit alone otherwise
    dictionary = single.cpu().decoder_atoms()[0].numpy()
    order = np.argsort(-np.asarray(metrics["per_unit_kl"]))
    arch = "" if cfg.model.arch == "lin|lin" else f"{cfg.model.arch}, "
    plot_dictionary(dictionary, run_dir / DICTIONARY, order,
                    title=f"{arch}{cfg.model.family}, K={cfg.model.K}, beta={cfg.train.beta:g}")
    metrics = dict(metrics)
    metrics["epochs"] = epochs
    metrics["train_seconds"] = seconds  # wall time of the (group) training it came from
    write_json(run_dir / METRICS, metrics)
    return metrics


def _slice(record: dict, j: int) -> dict:
    """The part of a stacked trainer's log record that belongs to model ``j``."""
    return {k: (v[j] if isinstance(v, list) else v) for k, v in record.items()}


def _check_group(cfgs: list[RunConfig]) -> None:
    def shared(c: RunConfig) -> dict:
        d = run_identity(c)
        d["train"] = {k: v for k, v in d["train"].items() if k not in ("beta", "seed")}
        return d

    if not cfgs:
        raise ValueError("a group needs at least one run")
    first = shared(cfgs[0])
    for c in cfgs[1:]:
        if shared(c) != first:
            raise ValueError("runs trained as one group may differ only in train.beta and train.seed")


def train_group(
    cfgs: list[RunConfig],
    run_dirs: list[str | Path],
    state_dir: str | Path,
    patches: PatchSet | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train runs that differ only in beta and seed as one stacked model, in one pass.

    Finished runs are skipped; the unfinished ones train together, and the
    group checkpoints to ``state_dir`` so that a killed process resumes where
    it stopped. Returns every run's metrics, in the order given.
    """
    run_dirs = [Path(d) for d in run_dirs]
    state_dir = Path(state_dir)
    for c in cfgs:
        c.validate()
    _check_group(cfgs)
    exists = [check_run_dir(c, d) for c, d in zip(cfgs, run_dirs)]
    todo = [i for i, d in enumerate(run_dirs) if not (exists[i] and is_finished(d))]
    if todo:
        patches = patches or prepare_patches(cfgs[0].data, progress=progress)  # before writing anything
        _train_members(cfgs, run_dirs, todo, state_dir, patches, progress)
    return [json.loads((d / METRICS).read_text()) for d in run_dirs]


def _train_members(cfgs, run_dirs, todo, state_dir: Path, patches: PatchSet, progress: bool) -> None:
    ckpt, roster_path = state_dir / CHECKPOINT, state_dir / GROUP
    index = {str(d.resolve()): i for i, d in enumerate(run_dirs)}
    members = [str(run_dirs[i].resolve()) for i in todo]
    resume = False
    if ckpt.exists() and roster_path.exists():
        roster = json.loads(roster_path.read_text())
        # A group killed while writing its results has some members finished:
        # resume the whole roster (bit-identical) and finish only the rest.
        if set(members) <= set(roster) and all(m in index for m in roster):
            members, resume = roster, True
    slots = [index[m] for m in members]  # runs in model-axis order
    unfinished = set(todo)
    for i in todo:
        prepare_run_dir(cfgs[i], run_dirs[i])
    train, val = patches.tensors()
    lead = cfgs[slots[0]]
    model = build_model(lead.model, seeds=[cfgs[i].train.seed for i in slots])
    trainer = Trainer(model, lead.train, train, betas=[cfgs[i].train.beta for i in slots])
    if resume:
        trainer.load_state(ckpt)
        for i in todo:
            _truncate_log(run_dirs[i] / LOG, trainer.epoch)
    else:
        for i in todo:
            (run_dirs[i] / LOG).unlink(missing_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        write_json(roster_path, members)

    def on_epoch(tr: Trainer, record: dict) -> None:
        for j, i in enumerate(slots):
            if i in unfinished:
                with open(run_dirs[i] / LOG, "a") as f:
                    f.write(json.dumps(_slice(record, j)) + "\n")
        if tr.epoch % lead.train.checkpoint_every == 0 or tr.epoch == tr.total_epochs:
            tr.save_state(ckpt)

    trainer.fit(on_epoch=on_epoch, progress=progress)
    metrics = evaluate(trainer.model, val, lead.train.eval_batch_size, seed=lead.train.seed)
    for j, i in enumerate(slots):
        if i in unfinished:
            finish_run(trainer.model, j, cfgs[i], {k: v[j] for k, v in metrics.items()}, run_dirs[i], trainer.epoch,
                       trainer.seconds)
    ckpt.unlink(missing_ok=True)
    roster_path.unlink(missing_ok=True)
    if state_dir != run_dirs[0] and state_dir.is_dir() and not any(state_dir.iterdir()):
        state_dir.rmdir()


def train_run(cfg: RunConfig, run_dir: str | Path, progress: bool = True, patches: PatchSet | None = None) -> dict:
    """Train (or resume, or return) the run that ``cfg`` describes in ``run_dir``.

    Everything is validated before any work; a finished run is not retrained.
    """
    return train_group([cfg], [run_dir], run_dir, patches=patches, progress=progress)[0]
