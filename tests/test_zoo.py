"""The model-zoo experiments: dead-neuron rule, Table 2 arithmetic, variants, and one tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from poissonvae.cli import main
from poissonvae.config import ConfigError
from poissonvae.zoo import (ZooSettings, active_fraction, dead_threshold, estimator_table, estimators_for, percent_drop,
                            preset, variants)
from poissonvae.zoo.analysis import ci99


def test_dead_threshold_splits_two_clusters_at_the_gap():
    rng = np.random.default_rng(0)
    alive = 10 ** rng.uniform(-2, 0, 100)  # 0.01 .. 1 nats
    dead = 10 ** rng.uniform(-7, -5, 400)  # collapsed units
    values = np.concatenate([alive, dead])
    thr = dead_threshold(values)
    assert dead.max() < thr < alive.min()
    assert active_fraction(values) == pytest.approx(100 / 500)


def test_dead_threshold_finds_a_gap_bridged_by_a_few_units():
    """Like an L-VAE at K = 512: two clusters with a handful of units in between (no empty decade)."""
    rng = np.random.default_rng(2)
    dead = 10 ** rng.uniform(-3.0, -2.0, 350)
    alive = 10 ** rng.uniform(-0.5, 0.1, 150)
    bridge = 10 ** np.linspace(-1.8, -0.8, 5)
    thr = dead_threshold(np.concatenate([dead, bridge, alive]))
    assert dead.max() < thr < alive.min()


def test_dead_threshold_one_cluster_is_all_alive_and_collapsed_is_all_dead():
    rng = np.random.default_rng(1)
    spread = 10 ** rng.uniform(-2, 0, 300)  # no gap of a decade anywhere
    assert active_fraction(spread) == 1.0
    collapsed = 10 ** rng.uniform(-6, -2.5, 300)  # everything below the floor of 0.01 nats
    assert active_fraction(collapsed) == 0.0
    with pytest.raises(ValueError, match="finite"):
        dead_threshold([0.1, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        dead_threshold([])


def test_ci99_matches_scipy_interval():
    x = np.array([1.0, 2.5, 2.0, 4.0, 3.1])
    lo, hi = stats.t.interval(0.99, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert ci99(x) == pytest.approx((hi - lo) / 2)
    assert ci99([3.0]) == 0.0


def _table2_frame():
    rows = []
    for arch, offset in (("lin|lin", 0.0), ("conv|lin", -10.0)):
        for est, vals in (("exact", [101.0, 102.0]), ("mc", [100.0, 100.5]), ("st", [110.0, 111.0])):
            for seed, v in enumerate(vals):
                rows.append({"family": "poisson", "arch": arch, "estimator": est, "seed": seed, "neg_elbo": v + offset})
    return pd.DataFrame(rows)


def test_percent_drop_against_best_run_of_same_family_and_arch():
    df = _table2_frame()
    drop = percent_drop(df)
    lin = df["arch"] == "lin|lin"
    expected = 100 * (df.loc[lin, "neg_elbo"] - 100.0) / 100.0  # best lin|lin run: MC seed 0 at 100
    assert np.allclose(drop[lin], expected)
    conv = ~lin
    assert np.allclose(drop[conv], 100 * (df.loc[conv, "neg_elbo"] - 90.0) / 90.0)
    t = estimator_table(df)
    st = t[(t["arch"] == "lin|lin") & (t["estimator"] == "st")].iloc[0]
    assert st["drop_pct"] == pytest.approx(10.5) and st["neg_elbo"] == pytest.approx(110.5)
    assert st["paper_drop_pct"] == 7.3 and st["paper_neg_elbo"] == 179.3


def test_estimators_apply_where_they_make_sense():
    assert estimators_for("poisson", "lin|lin") == ["exact", "mc", "st"]
    assert estimators_for("gaussian", "lin|lin") == ["exact", "mc"]  # no hard forward for a continuous latent
    assert estimators_for("poisson", "conv|conv") == ["mc", "st"]  # no closed form with a nonlinear decoder
    s = ZooSettings(K=8, seeds=[0], archs=["lin|lin"])
    labels = [v.label for v in variants("temperature", s)]
    assert len(labels) == len(set(labels)) == 3 * len(s.temperatures)
    assert all(v.estimator == "exact" for v in variants("active", s))


def test_bad_zoo_settings_are_refused():
    with pytest.raises(ConfigError, match="experiment"):
        variants("nonsense", preset("quick"))
    with pytest.raises(ConfigError, match="archs"):
        ZooSettings(archs=["mlp|mlp"]).validate()
    with pytest.raises(ConfigError, match="K"):
        ZooSettings(K=0).validate()
    with pytest.raises(ConfigError, match="duplicate"):
        ZooSettings(seeds=[0, 0]).validate()
    with pytest.raises(ConfigError, match="families"):
        ZooSettings(families=["poisson", "wishart"]).validate()
    with pytest.raises(ConfigError, match="unknown keys"):
        ZooSettings.from_dict({"K": 8, "colour": "blue"})
    with pytest.raises(ConfigError, match="train"):
        ZooSettings.from_dict({"train": {"epochz": 3}})


def test_zoo_settings_round_trip(tmp_path):
    s = preset("quick")
    s.save(tmp_path / "zoo.json")
    back = ZooSettings.load(tmp_path / "zoo.json")
    assert back.to_dict() == s.to_dict()


def test_zoo_cli_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "zoo"
    argv = ["zoo", "estimators", "--archs", "lin|lin", "--families", "poisson", "--K", "8", "--seeds", "0", "1",
            "--epochs", "1", "--warmup-epochs", "0", "--n-train", "600", "--n-val", "200", "--batch-size", "100",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    table = pd.read_csv(out / "estimators" / "estimators.csv")
    assert sorted(table["estimator"]) == ["exact", "mc", "st"]
    assert (table["n"] == 2).all() and np.isfinite(table["neg_elbo"]).all()
    # the best run's drop is exactly zero and no drop is negative
    res = pd.read_parquet(out / "estimators" / "results.parquet")
    assert len(res) == 6 and percent_drop(res).min() == 0.0
    for name in ("estimators.md", "zoo_estimators.png", "zoo_estimators.pdf", "claims.md", "zoo.json"):
        assert (out / "estimators" / name).is_file()
    weights = sorted(out.glob("variants/*/runs/*/weights.safetensors"))
    assert len(weights) == 6
    stamps = [w.stat().st_mtime_ns for w in weights]
    # active reuses the EX runs (nothing retrained) and its table reads their per-unit KLs
    assert main(["zoo", "active", *argv[2:]]) == 0
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    active = pd.read_csv(out / "active" / "active.csv")
    runs = out / "variants" / "poisson_lin-lin_exact" / "runs"
    kls = [json.loads((runs / f"poisson_K8_beta1_seed{s}" / "metrics.json").read_text())["per_unit_kl"] for s in (0, 1)]
    assert all(len(kl) == 8 for kl in kls)
    assert active["active"].iloc[0] == pytest.approx(np.mean([active_fraction(kl) for kl in kls]))


def test_zoo_cli_refuses_bad_input_before_work(tmp_path, capsys):
    out = tmp_path / "zoo"
    assert main(["zoo", "estimators", "--K", "0", "--out", str(out)]) == 2
    assert "K" in capsys.readouterr().err and not out.exists()
    assert main(["zoo", "sparsity", "--families", "wishart", "--out", str(out)]) == 2
    assert "wishart" in capsys.readouterr().err and not out.exists()
