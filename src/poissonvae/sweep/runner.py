"""Run a sweep: each (family, K) group trains as one stacked model.

Engines: ``local`` (default) trains the groups one after another in this
process; ``ray`` submits one task per group to a Ray cluster (a local one is
started when no address is given), with a GPU fraction per task when GPUs
exist. Either way, finished runs are skipped and a killed group resumes from
its checkpoint, so running the same command again completes a sweep.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..data import prepare_patches
from ..runs import run_identity, train_group
from .grid import SweepConfig, run_name
from .results import collect, write_results

SWEEP_FILE = "sweep.json"
ENGINES = ("local", "ray")


def group_dirs(sweep_dir: Path, cfgs: list[RunConfig]) -> tuple[list[Path], Path]:
    family, K = cfgs[0].model.family, cfgs[0].model.K
    return [sweep_dir / "runs" / run_name(c) for c in cfgs], sweep_dir / "groups" / f"{family}_K{K}"


def run_one_group(cfg_dicts: list[dict], sweep_dir: str, progress: bool = False) -> float:
    """Train one group (also the body of a Ray task); returns its wall time in seconds."""
    cfgs = [RunConfig.from_dict(d) for d in cfg_dicts]
    run_dirs, state_dir = group_dirs(Path(sweep_dir), cfgs)
    t0 = time.perf_counter()
    train_group(cfgs, run_dirs, state_dir, progress=progress)
    return time.perf_counter() - t0  # (train_seconds in each run's metrics is the trainer's own count)


def prepare_sweep_dir(sweep: SweepConfig, sweep_dir: Path) -> None:
    """Write ``sweep.json``. A directory may be reused with another grid (runs
    already there are kept), but not with other data, model or training settings."""
    path = sweep_dir / SWEEP_FILE
    if path.exists():
        old = SweepConfig.load(path)
        if run_identity(RunConfig(old.data, old.model, old.train)) != run_identity(RunConfig(sweep.data, sweep.model, sweep.train)):
            raise ConfigError(f"{sweep_dir} holds a sweep with other data/model/training settings; use another --out")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep.save(path)


def run_sweep(
    sweep: SweepConfig,
    sweep_dir: str | Path,
    engine: str = "local",
    address: str | None = None,
    progress: bool = True,
):
    """Train every unfinished run of ``sweep`` and write ``results.parquet``; returns the table."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; expected one of {ENGINES}")
    sweep.validate()  # every run's config, before any work
    sweep_dir = Path(sweep_dir)
    patches = prepare_patches(sweep.data, progress=progress)  # once, shared (and cached for Ray workers)
    prepare_sweep_dir(sweep, sweep_dir)
    groups = list(sweep.groups().values())
    if engine == "local":
        from tqdm.auto import tqdm

        for cfgs in tqdm(groups, desc="groups", unit="group", disable=not progress):
            run_dirs, state_dir = group_dirs(sweep_dir, cfgs)
            train_group(cfgs, run_dirs, state_dir, patches=patches, progress=progress)
    else:
        from .ray_engine import run_groups_on_ray

        run_groups_on_ray(groups, sweep_dir, address, progress)
    groups_dir = sweep_dir / "groups"  # holds checkpoints only while groups are in progress
    if groups_dir.is_dir() and not any(groups_dir.iterdir()):
        groups_dir.rmdir()
    df = collect(sweep, sweep_dir)
    write_results(df, sweep_dir)
    return df
