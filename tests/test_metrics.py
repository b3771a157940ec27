"""Metrics against independent computations (numpy loops, scikit-learn)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

import poissonvae.metrics as M


def test_lifetime_sparsity_matches_loop_and_extremes():
    rng = np.random.default_rng(0)
    z = rng.poisson(0.7, size=(50, 6)).astype(np.float64)
    N = z.shape[0]
    expected = []
    for j in range(z.shape[1]):  # P-VAE eq. (5), written out
        col = z[:, j]
        expected.append((1 - (col.sum() ** 2) / (N * (col**2).sum())) / (1 - 1 / N))
    assert np.allclose(M.lifetime_sparsity(torch.tensor(z)).numpy(), expected)
    one_hot = torch.zeros(20, 3)
    one_hot[4, 0] = 3.0  # answers a single stimulus: s = 1
    one_hot[:, 1] = 2.0  # answers all alike: s = 0
    s = M.lifetime_sparsity(one_hot)
    assert s[0].item() == pytest.approx(1.0) and s[1].item() == pytest.approx(0.0) and torch.isnan(s[2])


def test_lifetime_sparsity_of_signed_latents_uses_magnitudes():
    """Signed responses enter as |z|: for z ~ N(0, 1) (a G-VAE unit at its prior)
    s -> 1 - E|z|^2 / E[z^2] = 1 - 2/pi, the P-VAE paper's G-VAE value (0.37);
    the signed sum would cancel and give about 1."""
    z = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = M.lifetime_sparsity(z)
    assert torch.allclose(s, torch.full_like(s, 1 - 2 / np.pi), atol=5e-3)
    assert torch.equal(M.lifetime_sparsity(z), M.lifetime_sparsity(-z))
    # the evaluation's batched sums agree with the function
    n = z.shape[0]
    batched = M.lifetime_sparsity_from_sums(z.abs().sum(0), (z**2).sum(0), n)
    assert torch.allclose(batched, s)


def test_r2_and_mse_match_sklearn_and_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 16))
    x_hat = x + rng.normal(scale=0.5, size=x.shape)
    r2 = M.r_squared(torch.tensor(x), torch.tensor(x_hat)).item()
    assert r2 == pytest.approx(r2_score(x, x_hat, multioutput="variance_weighted"), rel=1e-10)
    assert M.mse(torch.tensor(x), torch.tensor(x_hat)).item() == pytest.approx(((x - x_hat) ** 2).sum(1).mean())


def test_sparsity_cost_and_overall_performance():
    z = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 5.0]])
    assert M.proportion_zeros(z).item() == pytest.approx(5 / 8)
    assert M.metabolic_cost(z).item() == pytest.approx(8 / 8)
    # Fig. 6: perfect reconstruction and full sparsity -> 0; R^2 = 0 and PZ = 0 -> 1
    assert M.overall_performance(torch.tensor(1.0), torch.tensor(1.0)).item() == 0.0
    assert M.overall_performance(torch.tensor(0.0), torch.tensor(0.0)).item() == pytest.approx(1.0)
    assert M.overall_performance(torch.tensor(0.5), torch.tensor(0.9)).item() == pytest.approx(np.hypot(0.5, 0.1) / np.sqrt(2))


def test_metrics_keep_model_axis():
    z = torch.zeros(3, 10, 4)
    z[1] = 1.0
    assert M.proportion_zeros(z).tolist() == [1.0, 0.0, 1.0]
    assert M.per_unit_kl(torch.ones(3, 10, 4)).shape == (3, 4)
