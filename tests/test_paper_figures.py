"""Tests of the paper's figures drawn from a synthetic sweep (no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poissonvae import paper_figures as pf
from poissonvae.checkpoint import save_weights
from poissonvae.config import ModelConfig
from poissonvae.models import LinearVAE

BETAS = (0.01, 0.1, 0.5, 1.0, 8.0)
KS = (32, 64)
SEEDS = (0, 1)
RUN_BETAS = (0.01, 1.0, 8.0)  # runs that get real weights (K = 64, seed 0)


def synthetic_table(betas=BETAS, Ks=KS, seeds=SEEDS) -> pd.DataFrame:
    """Known metrics: P-VAE cost 1/(1 + 10 beta), sparsity rising with beta and K;
    G_relu-VAE flat cost and 50% zeros. Seeds add +-noise that averages out."""
    rows = []
    for fam in ("poisson", "gaussian_relu"):
        for K in Ks:
            for beta in betas:
                for seed in seeds:
                    noise = 1e-3 * (1 if seed % 2 == 0 else -1) if len(seeds) > 1 else 0.0
                    if fam == "poisson":
                        mc = 1 / (1 + 10 * beta)
                        pz = 0.95 * beta / (beta + 0.5) + 0.005 * math.log2(K / 32)
                        r2 = 0.95 - 0.9 * pz**4
                    else:
                        mc, pz, r2 = 0.3, 0.5, 0.8 - 0.05 * beta
                    mc, pz = mc + noise * mc, pz + noise
                    rows.append(dict(
                        family=fam, K=K, beta=beta, seed=seed, run_dir=f"{fam}_K{K}_b{beta:g}_s{seed}",
                        mse=1 - r2, r2=r2, metabolic_cost=mc, proportion_zeros=pz,
                        overall_performance=math.hypot(1 - r2, 1 - pz) / math.sqrt(2), recon=100.0, kl=10.0,
                        neg_elbo=110.0 + beta, lifetime_sparsity=math.nan if beta == 8.0 else 0.5, epochs=3,
                        train_seconds=12.5))
    return pd.DataFrame(rows)


def write_run(run: Path, family: str, K: int, seed: int) -> list[float]:
    run.mkdir(parents=True)
    save_weights(LinearVAE(ModelConfig(family=family, K=K), seeds=(seed,)), run / "weights.safetensors")
    kl = [float((7 * i) % K) for i in range(K)]  # a known permutation of 0..K-1
    (run / "metrics.json").write_text(json.dumps({"per_unit_kl": kl}))
    return kl


def make_sweep(root: Path, df: pd.DataFrame | None = None) -> Path:
    df = synthetic_table() if df is None else df
    root.mkdir(parents=True, exist_ok=True)
    df.to_parquet(root / "results.parquet")
    for fam in ("poisson", "gaussian_relu"):
        for beta in RUN_BETAS:
            write_run(root / f"{fam}_K64_b{beta:g}_s0", fam, 64, 0)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("sweep"))


def expected_names() -> set[str]:
    names = ["fig1_kl_nonlinearities", "fig2_posteriors", "fig3_relu_moments", "fig4_metabolic_cost",
             "fig5_sparsity", "fig6_tradeoff", "fig7_pies"]
    names += [f"dictionary_{fam}_K64_beta{b:g}" for fam in ("poisson", "gaussian_relu") for b in RUN_BETAS]
    return {f"{n}.{ext}" for n in names for ext in ("png", "pdf")}


def test_make_all_writes_every_figure(sweep):
    paths = pf.make_all(sweep)
    assert {p.name for p in paths} == expected_names()
    for p in paths:
        assert p.parent == sweep / "figures"
        assert p.is_file() and p.stat().st_size > 1000, p
    assert (sweep / "figures" / "fig4_metabolic_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweep / "figures" / "fig4_metabolic_cost.pdf").read_bytes()[:5] == b"%PDF-"


def test_single_K_single_seed(tmp_path):
    """A one-K, one-seed sweep: K = 512 falls back to K = 64; custom output folder."""
    root = make_sweep(tmp_path / "s", synthetic_table(Ks=(64,), seeds=(0,)))
    paths = pf.make_all(root, out=tmp_path / "elsewhere")
    assert {p.name for p in paths} == expected_names()
    assert all(p.parent == tmp_path / "elsewhere" and p.stat().st_size > 1000 for p in paths)


def test_one_family_and_one_beta(tmp_path):
    df = synthetic_table(Ks=(64,), seeds=(0,))
    paths = pf.fig4_metabolic_cost(df[df["family"] == "poisson"], tmp_path)  # a single panel
    one_beta = df[df["beta"] == 1.0]  # degenerate colour scale, one pie per row
    paths += pf.fig6_tradeoff(one_beta, tmp_path) + pf.fig7_pies(one_beta, tmp_path)
    assert len(paths) == 6 and all(p.stat().st_size > 1000 for p in paths)


def test_dictionary_ordered_by_kl_with_K_fallback(tmp_path, monkeypatch):
    root = make_sweep(tmp_path / "s")
    kl = json.loads((root / "poisson_K64_b1_s0" / "metrics.json").read_text())["per_unit_kl"]
    calls = []
    monkeypatch.setattr(pf, "plot_dictionary", lambda d, path, order=None, title="": calls.append((d, path, order, title)))
    paths = pf.dictionaries(synthetic_table(), root, tmp_path / "out", K=512)  # K = 512 absent: largest K, 64
    assert len(paths) == 12 and len(calls) == 12
    d, path, order, title = next(c for c in calls if c[1].name == "dictionary_poisson_K64_beta1.png")
    assert d.shape == (256, 64)
    np.testing.assert_array_equal(order, np.argsort(-np.array(kl)))
    assert [kl[i] for i in order] == sorted(kl, reverse=True)
    assert "512" in title


def test_dictionaries_skip_runs_without_weights(tmp_path):
    df = synthetic_table()
    df.to_parquet(tmp_path / "results.parquet")  # no run directories at all
    assert pf.dictionaries(df, tmp_path, tmp_path / "figs") == []


def test_pick_K():
    df = synthetic_table()
    assert pf.pick_K(df, 32) == (32, "")
    K, note = pf.pick_K(df, 512)
    assert K == 64 and "512" in note


def test_summarize_averages_seeds():
    s = pf.summarize(synthetic_table())
    assert len(s) == 2 * len(KS) * len(BETAS) and set(s["n_seeds"]) == {2}
    row = s[(s["family"] == "poisson") & (s["K"] == 32) & (s["beta"] == 1.0)].iloc[0]
    assert row["metabolic_cost"] == pytest.approx(1 / 11)  # +-noise cancels
    assert row["proportion_zeros"] == pytest.approx(0.95 / 1.5)


def test_missing_results_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.parquet"):
        pf.make_all(tmp_path)


def test_missing_columns(tmp_path):
    synthetic_table().drop(columns=["metabolic_cost", "r2"]).to_parquet(tmp_path / "results.parquet")
    with pytest.raises(ValueError, match=r"results.parquet.*metabolic_cost.*r2"):
        pf.make_all(tmp_path)


def test_empty_table(tmp_path):
    synthetic_table().iloc[:0].to_parquet(tmp_path / "results.parquet")
    with pytest.raises(ValueError, match="no rows"):
        pf.load_results(tmp_path)
