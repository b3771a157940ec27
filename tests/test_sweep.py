"""Sweep: grid validation, resume after kill -9, the Ray engine."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from poissonvae.config import ConfigError, ModelConfig, TrainConfig
from poissonvae.data import DataConfig
from poissonvae.sweep import SweepConfig, preset, run_sweep

SRC = str(Path(__file__).resolve().parents[1] / "src")


def tiny_sweep(cache_dir, epochs=3, **kw) -> SweepConfig:
    base = dict(
        Ks=[4, 8],
        betas=[0.1, 2.0],
        data=DataConfig(n_train=1000, n_val=300, patch_size=4, cache_dir=str(cache_dir)),
        model=ModelConfig(input_dim=16),
        train=TrainConfig(epochs=epochs, warmup_epochs=1, batch_size=250, checkpoint_every=1),
    )
    base.update(kw)
    return SweepConfig(**base)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(Ks=[]), "sweep.Ks is empty"),
        (dict(betas=[]), "sweep.betas is empty"),
        (dict(families=[]), "sweep.families is empty"),
        (dict(betas=[1.0, 1.0]), "duplicate"),
        (dict(Ks=[8, 8]), "duplicate"),
        (dict(families=["poisson", "gauss"]), "unknown latent families"),
        (dict(Ks=[0, 8]), "Ks must be integers >= 1"),
        (dict(betas=[-1.0]), "betas must be finite numbers >= 0"),
        (dict(seeds=[-2]), "seeds"),
    ],
)
def test_bad_grids_are_rejected_before_any_work(tmp_path, change, message):
    sweep = tiny_sweep(tmp_path / "cache", **change)
    with pytest.raises(ConfigError, match=message):
        run_sweep(sweep, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_presets_and_file_round_trip(tmp_path):
    paper = preset("paper").validate()
    assert len(paper.runs()) == 128 and paper.train.epochs == 3000
    quick = preset("quick").validate()
    quick.save(tmp_path / "s.json")
    assert SweepConfig.load(tmp_path / "s.json").to_dict() == quick.to_dict()
    with pytest.raises(ConfigError, match="unknown sweep preset"):
        preset("huge")
    (tmp_path / "bad.json").write_text(json.dumps({"Ks": [8], "learning": 3}))
    with pytest.raises(ConfigError, match="unknown keys"):
        SweepConfig.load(tmp_path / "bad.json")


def test_sweep_writes_a_table_and_skips_finished_runs(tmp_path):
    sweep = tiny_sweep(tmp_path / "cache")
    df = run_sweep(sweep, tmp_path / "out", progress=False)
    assert len(df) == 8 and set(df.family) == {"poisson", "gaussian_relu"}
    table = pd.read_parquet(tmp_path / "out" / "results.parquet")
    pd.testing.assert_frame_equal(table, df)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "runs").glob("*/metrics.json")}
    again = run_sweep(sweep, tmp_path / "out", progress=False)
    pd.testing.assert_frame_equal(again, df)
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}  # nothing retrained


_SCRIPT = """
import sys
sys.path.insert(0, {src!r})
from poissonvae.sweep import SweepConfig, run_sweep
run_sweep(SweepConfig.load({cfg!r}), {out!r}, progress=False)
"""


def test_sweep_killed_with_sigkill_resumes_to_the_same_table(tmp_path):
    sweep = tiny_sweep(tmp_path / "cache", epochs=40, Ks=[4, 8, 12])
    reference = run_sweep(sweep, tmp_path / "reference", progress=False)

    out = tmp_path / "killed"
    sweep.save(tmp_path / "sweep.json")
    script = _SCRIPT.format(src=SRC, cfg=str(tmp_path / "sweep.json"), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    # wait until one group has finished and another is part-way (its checkpoint exists)
    while time.time() < deadline:
        done = list(out.glob("runs/*/metrics.json"))
        ckpts = list(out.glob("groups/*/checkpoint.safetensors"))
        if done and ckpts:
            break
        if proc.poll() is not None:
            pytest.fail("the sweep finished before it could be killed; make it longer")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the sweep made no progress")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    assert 0 < len(finished_before) < 12

    resumed = run_sweep(sweep, out, progress=False)
    cols = ["family", "K", "beta", "seed", "mse", "r2", "metabolic_cost", "proportion_zeros", "neg_elbo"]
    pd.testing.assert_frame_equal(resumed[cols], reference[cols], rtol=1e-5)
    # runs finished before the kill were not trained again ...
    assert finished_before == {p: p.stat().st_mtime_ns for p in finished_before}
    # ... and every run's log holds each epoch exactly once
    for log in out.glob("runs/*/log.jsonl"):
        epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
        assert epochs == list(range(1, 42)), log


def test_ray_engine_runs_a_tiny_grid(tmp_path):
    pytest.importorskip("ray")
    sweep = tiny_sweep(tmp_path / "cache", Ks=[4], betas=[0.5, 1.0])
    local = run_sweep(sweep, tmp_path / "local", progress=False)
    remote = run_sweep(sweep, tmp_path / "ray", engine="ray", progress=False)
    cols = ["family", "K", "beta", "mse", "metabolic_cost", "proportion_zeros"]
    pd.testing.assert_frame_equal(remote[cols], local[cols])


def test_a_sweep_directory_can_grow_its_grid_but_not_change_its_settings(tmp_path):
    sweep = tiny_sweep(tmp_path / "cache", Ks=[4], betas=[0.5])
    run_sweep(sweep, tmp_path / "out", progress=False)
    first = (tmp_path / "out" / "runs" / "poisson_K4_beta0.5_seed0" / "metrics.json").stat().st_mtime_ns
    grown = tiny_sweep(tmp_path / "cache", Ks=[4], betas=[0.5, 2.0])
    df = run_sweep(grown, tmp_path / "out", progress=False)
    assert len(df) == 4 and not (tmp_path / "out" / "groups").exists()
    assert (tmp_path / "out" / "runs" / "poisson_K4_beta0.5_seed0" / "metrics.json").stat().st_mtime_ns == first
    changed = tiny_sweep(tmp_path / "cache", Ks=[4], betas=[0.5], epochs=5)
    with pytest.raises(ConfigError, match="other data/model/training settings"):
        run_sweep(changed, tmp_path / "out", progress=False)


def test_every_family_trains_through_the_vectorised_sweep(tmp_path):
    from poissonvae.families import FAMILIES

    sweep = tiny_sweep(tmp_path / "cache", Ks=[4], betas=[0.5, 2.0], families=sorted(FAMILIES), epochs=2)
    df = run_sweep(sweep, tmp_path / "out", progress=False)
    assert sorted(df.family.unique()) == sorted(FAMILIES) and len(df) == 2 * len(FAMILIES)
    assert df[["mse", "kl", "neg_elbo"]].notna().all().all()
