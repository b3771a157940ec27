"""`poissonvae sparse` and `fig5b`, and the best-model rule (P-VAE Fig. 5b, issue #5).

The CLI runs on a tiny problem (4x4 patches, K = 8); the figure and the table are
checked on hand-made tables whose right answers are known.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import poissonvae.sparse_coding as sc
from poissonvae.cli import main
from poissonvae.sparse_coding.figures import best_models, candidates, to_markdown, vae_points


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def tiny(out, cache_dir, penalties=("0.05", "0.5"), extra=()):
    return ["sparse", "--K", "8", "--methods", "lca", "fista", "--penalties", *penalties, "--epochs", "2",
            "--batch-size", "100", "--max-iter", "50", "--eval-max-iter", "200", "--n-train", "1000", "--n-val",
            "300", "--patch-size", "4", "--cache-dir", str(cache_dir), "--threads", "1", "--no-progress",
            "--out", str(out), *extra]


# --- poissonvae sparse ---------------------------------------------------------------


def test_sparse_command_writes_table_and_figure_then_resumes(tmp_path, cache_dir, capsys, monkeypatch):
    out = tmp_path / "sc"
    assert main(tiny(out, cache_dir)) == 0
    table = pd.read_csv(out / "sparse_results.csv")
    assert sorted(zip(table.method, table.penalty)) == [("fista", 0.05), ("fista", 0.5), ("lca", 0.05), ("lca", 0.5)]
    assert (table.K == 8).all() and (table.mse > 0).all()
    assert table.lifetime_sparsity.between(0, 1).all()
    for _, rows in table.groupby("method"):  # a larger penalty gives sparser codes
        rows = rows.sort_values("penalty")
        assert rows.proportion_zeros.iloc[1] > rows.proportion_zeros.iloc[0]
    # LCA and FISTA minimise the same objective: converged, they reach the same codes.
    by = table.set_index(["method", "penalty"])
    assert by.loc[("lca", 0.5), "mse"] == pytest.approx(by.loc[("fista", 0.5), "mse"], rel=1e-2)
    # The saved dictionary reproduces the row: unit-norm (D, K) columns, same metrics.
    phi = torch.from_numpy(np.load(out / "dictionaries" / "lca_penalty0.5.npy"))
    assert phi.shape == (16, 8)
    torch.testing.assert_close(phi.norm(dim=0), torch.ones(8))
    from poissonvae.data import DataConfig, prepare_patches

    _, val = prepare_patches(DataConfig(n_train=1000, n_val=300, patch_size=4, cache_dir=str(cache_dir))).tensors()
    codes = sc.infer_batched(val, phi, 0.5, method="lca", nonnegative=True, max_iter=200, tol=1e-4)
    assert sc.code_metrics(val, phi, codes, 0.5)["mse"] == pytest.approx(by.loc[("lca", 0.5), "mse"], rel=1e-5)
    # The figure's points are the table's rows; the best-model table follows its rule.
    points = pd.read_csv(out / "fig5b.csv")
    lca = points[points.series == "lca"]
    np.testing.assert_allclose(lca.mse, table[table.method == "lca"].sort_values("penalty").mse)
    assert (out / "fig5b.png").stat().st_size > 0 and (out / "fig5b.pdf").stat().st_size > 0
    best = pd.read_csv(out / "best_models.csv").set_index("method")
    for method, rows in table.groupby("method"):
        ok = rows[rows.lifetime_sparsity >= 0.9]
        expect = ok.mse.min() if len(ok) else rows.loc[rows.lifetime_sparsity.idxmax(), "mse"]
        assert best.loc[method, "mse"] == pytest.approx(expect) and best.loc[method, "rule_met"] == (len(ok) > 0)
    assert best.loc["lca", "paper_mse"] == 50.17
    assert "| lca | sparse coding | 8 |" in (out / "best_models.md").read_text()
    printed = capsys.readouterr().out
    assert "best model per method" in printed and "50.17" in printed

    # Rerun with one more penalty: only the two new (method, penalty) points are computed.
    calls = []
    real = sc.penalty_point

    def counting(*args, **kwargs):
        calls.append((kwargs["method"], args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(sc, "penalty_point", counting)
    assert main(tiny(out, cache_dir, penalties=("0.05", "0.2", "0.5"))) == 0
    assert sorted(calls) == [("fista", 0.2), ("lca", 0.2)]
    again = pd.read_csv(out / "sparse_results.csv")
    assert len(again) == 6
    pd.testing.assert_frame_equal(again.iloc[:4], table)  # finished rows untouched
    assert "4 of 6 (method, penalty) points already" in capsys.readouterr().out
    calls.clear()
    assert main(tiny(out, cache_dir, penalties=("0.05", "0.2", "0.5"))) == 0
    assert calls == []

    # Other settings in the same folder are refused, and nothing is touched.
    assert main(tiny(out, cache_dir, extra=("--K", "6"))) == 2
    assert "other settings (differing: K)" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(out / "sparse_results.csv"), again)


@pytest.mark.parametrize("extra, message", [
    (["--penalties", "-1"], "--penalties must be finite numbers >= 0"),
    (["--methods", "omp"], "--methods: unknown ['omp']"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--min-sparsity", "2"], "--min-sparsity must be in [0, 1]"),
    (["--sweep", "nowhere"], "no results.parquet"),
    (["--gap", "nowhere.csv"], "no such file or directory"),
    (["--patch-size", "1"], "patch_size"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--methods", "lca", "--compile"], "--compile fuses FISTA's kernels, but --methods is ['lca']"),
])
def test_sparse_command_rejects_bad_settings_before_any_work(tmp_path, capsys, extra, message):
    out, cache = tmp_path / "sc", tmp_path / "cache"
    assert main(tiny(out, cache, extra=extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not cache.exists()


# --- best-model rule ---------------------------------------------------------------------


def hand_made_models() -> pd.DataFrame:
    rows = [  # method, mse, lifetime sparsity
        ("a", 10.0, 0.50), ("a", 20.0, 0.91), ("a", 15.0, 0.95), ("a", 30.0, 0.99), ("a", float("nan"), 0.97),
        ("b", 5.0, 0.30), ("b", 8.0, 0.80), ("b", 4.0, float("nan")),
        ("lca", 60.0, 0.92), ("lca", 40.0, 0.89),
        ("poisson", 70.0, 0.96),
    ]
    df = pd.DataFrame(rows, columns=["method", "mse", "lifetime_sparsity"])
    return df.assign(setting=[f"#{i}" for i in range(len(df))])


def test_best_model_rule_picks_the_right_rows():
    best = best_models(hand_made_models(), min_sparsity=0.9).set_index("method")
    assert list(best.index) == ["a", "b", "lca", "poisson"]  # order of first appearance
    # a: lowest MSE among s >= .9 (15 at .95), not the lowest overall (10 at .5); the NaN-MSE row never counts.
    assert best.loc["a", "setting"] == "#2" and best.loc["a", "rule_met"] and best.loc["a", "n_candidates"] == 4
    # b: nothing reaches .9, so the sparsest row, flagged; NaN sparsity is not "sparsest".
    assert best.loc["b", "setting"] == "#6" and not best.loc["b", "rule_met"]
    # lca: the .89 model has the lower MSE but misses the floor.
    assert best.loc["lca", "mse"] == 60.0
    assert (best.loc["lca", "paper_mse"], best.loc["lca", "paper_lifetime_sparsity"]) == (50.17, 0.917)
    # Our lin|lin P-VAE is set beside the paper's conv|lin P-VAE (sparsity only).
    assert best.loc["poisson", "paper_lifetime_sparsity"] == 0.94 and math.isnan(best.loc["poisson", "paper_mse"])
    assert math.isnan(best.loc["a", "paper_mse"])
    # Without a floor: the lowest MSE of each method.
    free = best_models(hand_made_models()).set_index("method")
    assert free.loc["a", "mse"] == 10.0 and free.loc["b", "mse"] == 4.0 and free.loc["lca", "mse"] == 40.0
    assert free.rule_met.all()
    md = to_markdown(best_models(hand_made_models(), 0.9), 0.9)
    assert "lifetime sparsity >= 0.9" in md
    assert "| b |  | - | #6 | 8.00 | 0.800 | - | no | - | - |" in md
    assert "| lca |  | - | #8 | 60.00 | 0.920 | - | yes | 50.17 | 0.917 |" in md


# --- fig5b from files -------------------------------------------------------------------


def hand_made_sweep(path):
    """results.parquet of 2 families x K in {8, 16} x 3 betas x 2 seeds, with known means."""
    rows = []
    for fam, base in (("poisson", 100.0), ("gaussian_relu", 50.0)):
        for K in (8, 16):
            for beta in (2.0, 0.5, 1.0):  # out of order on purpose
                for seed in (0, 1):
                    rows.append({"family": fam, "K": K, "beta": beta, "seed": seed, "run_dir": f"runs/{fam}{K}",
                                 "mse": base + 10 * beta + K + seed, "proportion_zeros": 0.4,
                                 "lifetime_sparsity": 0.5 + 0.1 * beta + 0.02 * seed})
    path.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(path / "results.parquet", index=False)
    return pd.DataFrame(rows)


def test_fig5b_command_reads_hand_made_tables(tmp_path, capsys):
    results = hand_made_sweep(tmp_path / "sweep")
    sparse_dir = tmp_path / "sc"
    sparse_dir.mkdir()
    sparse = pd.DataFrame({"method": ["ista", "ista", "lca", "lca"], "penalty": [0.5, 0.1, 0.1, 0.5],
                           "mse": [90.0, 40.0, 35.0, 80.0], "lifetime_sparsity": [0.95, 0.6, 0.62, 0.93],
                           "proportion_zeros": [0.9, 0.3, 0.3, 0.9], "objective": 1.0, "active_units": 1.0, "K": 8,
                           "seconds": 1.0})
    sparse.to_csv(sparse_dir / "sparse_results.csv", index=False)
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"method": "lca on run", "penalty": [0.3, 0.1], "mse": [70.0, 30.0], "lifetime_sparsity": [0.9, 0.7],
                  "proportion_zeros": 0.5}).to_csv(run / "gap_lca.csv", index=False)
    (run / "metrics.json").write_text(json.dumps({"mse": 150.0, "lifetime_sparsity": 0.94}))
    out = tmp_path / "fig"
    assert main(["fig5b", "--sparse", str(sparse_dir), "--sweep", str(tmp_path / "sweep"), "--gap", str(run),
                 "--out", str(out)]) == 0
    points = pd.read_csv(out / "fig5b.csv")
    # VAEs at the sparse table's K = 8, seed-averaged, in order of beta.
    pvae = points[points.series == "P-VAE lin|lin (K=8)"]
    assert list(pvae.setting) == ["beta=0.5", "beta=1", "beta=2"]
    expect = results[(results.family == "poisson") & (results.K == 8)].groupby("beta").mse.mean()
    np.testing.assert_allclose(pvae.mse, expect.to_numpy())  # 100 + 10 beta + 8 + 0.5
    np.testing.assert_allclose(pvae.lifetime_sparsity, [0.56, 0.61, 0.71])
    assert set(points.series) == {"ista", "lca", "lca on run", "P-VAE lin|lin (K=8)", "G_relu-VAE lin|lin (K=8)",
                                  "encoder of run"}
    assert list(points[points.series == "lca"].setting) == ["penalty=0.1", "penalty=0.5"]
    assert list(points[points.series == "lca on run"].mse) == [30.0, 70.0]
    enc = points[points.kind == "encoder"].iloc[0]
    assert (enc.mse, enc.lifetime_sparsity) == (150.0, 0.94)
    assert (out / "fig5b.png").stat().st_size > 0 and (out / "fig5b.pdf").stat().st_size > 0
    best = pd.read_csv(out / "best_models.csv").set_index("method")
    assert best.loc["lca", "mse"] == 80.0 and best.loc["ista", "mse"] == 90.0  # lowest MSE at s >= .9
    assert best.loc["lca on run", "mse"] == 70.0 and best.loc["encoder of run", "mse"] == 150.0
    assert not best.loc["poisson", "rule_met"]  # s <= .73 < .9: its sparsest model
    assert best.loc["poisson", "setting"] == "beta=2"
    capsys.readouterr()

    # A K the sweep lacks: the largest K, said in the title; only the sweep: written beside it.
    assert main(["fig5b", "--sweep", str(tmp_path / "sweep"), "--K", "64"]) == 0
    points = pd.read_csv(tmp_path / "sweep" / "figures" / "fig5b.csv")
    assert set(points.series) == {"P-VAE lin|lin (K=16)", "G_relu-VAE lin|lin (K=16)"}
    capsys.readouterr()
    assert main(["fig5b"]) == 2
    assert "give at least one of" in capsys.readouterr().err
    assert main(["fig5b", "--sparse", str(tmp_path)]) == 2
    assert "no sparse_results.csv" in capsys.readouterr().err


def test_vae_points_and_candidates_need_their_columns():
    with pytest.raises(ValueError, match="lacks column"):
        vae_points(pd.DataFrame({"family": ["poisson"], "K": [8]}))
    with pytest.raises(ValueError, match="no models"):
        candidates()


def test_compile_flag_reaches_fista_only_and_is_not_part_of_the_identity(tmp_path, cache_dir, monkeypatch):
    seen = []

    def fake_point(*args, **kwargs):  # records the option; the solvers' own tests check the kernels
        seen.append((kwargs["method"], kwargs["compile"]))
        row = {"method": kwargs["method"], "penalty": args[3], "mse": 1.0, "lifetime_sparsity": 0.5,
               "proportion_zeros": 0.5, "objective": 1.0, "active_units": 8}
        assert list(row) == sc.COLUMNS
        return row, torch.eye(16, 8)

    monkeypatch.setattr(sc, "penalty_point", fake_point)
    out = tmp_path / "sc"
    assert main(tiny(out, cache_dir, penalties=("0.5",), extra=("--compile",))) == 0
    assert sorted(seen) == [("fista", True), ("lca", False)]
    seen.clear()
    # the same folder without --compile: nothing to redo, no "other settings" refusal
    assert main(tiny(out, cache_dir, penalties=("0.5",))) == 0
    assert seen == []
