"""Dead units: the split of a run's units and what a dead unit's samples look like."""

import math

import numpy as np
import pytest
import torch

from poissonvae.config import ModelConfig
from poissonvae.dead_units import split_by_life
from poissonvae.evaluation import evaluate
from poissonvae.models import LinearVAE

D, K = 16, 8


def test_split_by_life_separates_the_kl_clusters_and_averages_each_groups_zeros():
    kl = [1e-6, 2e-6, 5e-7, 0.8, 1.2, 2.0, 0.9, 1.5]
    zeros = [0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.0, 0.2]
    out = split_by_life(kl, zeros)
    assert out["dead_fraction"] == pytest.approx(3 / 8)
    assert out["dead_zeros"] == pytest.approx(0.8)
    assert out["alive_zeros"] == pytest.approx(0.16)
    alive = split_by_life([0.5, 0.7, 1.0], [0.1, 0.2, 0.3])  # one cluster above the floor: all alive
    assert alive["dead_fraction"] == 0.0 and math.isnan(alive["dead_zeros"])
    assert math.isnan(split_by_life(kl)["alive_zeros"])  # no per-unit zeros given
    with pytest.raises(ValueError, match="shape"):
        split_by_life(kl, zeros[:3])


def _patches(n, seed=0):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_a_dead_rectified_unit_is_zero_as_often_as_its_learned_prior():
    """Units whose encoder rows are zero have posterior = prior (KL exactly 0): their
    samples are relu of N(mu0, sigma0^2), zero with probability Phi(-mu0 / sigma0)."""
    model = LinearVAE(ModelConfig(family="gaussian_relu", K=K, input_dim=D), seeds=[0])
    dead = torch.arange(K) < 4
    mu0 = torch.tensor([-1.0, 0.0, 0.5, -2.0])
    with torch.no_grad():
        model.encoder[0, :K][dead] = 0.0  # delta_mu rows
        model.encoder[0, K:][dead] = 0.0  # delta log-sigma rows
        model.prior_mu[0, dead] = mu0
        model.prior_log_sigma[0, dead] = 0.0
    n = 40_000
    m = evaluate(model, _patches(n))
    kl = np.asarray(m["per_unit_kl"][0])
    assert np.all(kl[:4] < 1e-9) and np.all(kl[4:] > 1e-3)
    zeros = np.asarray(m["unit_proportion_zeros"][0])
    want = 0.5 * torch.erfc(mu0 / math.sqrt(2)).numpy()  # Phi(-mu0), sigma0 = 1
    assert np.abs(zeros[:4] - want).max() < 4 * math.sqrt(0.25 / n)
    out = split_by_life(kl, zeros)
    assert out["dead_fraction"] == 0.5
    assert out["dead_zeros"] == pytest.approx(want.mean(), abs=2 * math.sqrt(0.25 / n))
    assert np.mean(zeros) == pytest.approx(m["proportion_zeros"][0], abs=1e-6)


def test_per_unit_zeros_of_poisson_units_match_the_poisson_zero_probability():
    model = LinearVAE(ModelConfig(family="poisson", K=K, input_dim=D, init_std=0.3), seeds=[1])
    with torch.no_grad():
        model.prior_log_rate.fill_(0.0)  # rates near 1: P(0) spread over (0, 1)
    x = _patches(40_000, seed=2)
    zeros = np.asarray(evaluate(model, x)["unit_proportion_zeros"][0])
    with torch.no_grad():
        rate, _ = model.family.moments(model.encode(x))
    want = torch.exp(-rate[0].double()).mean(0).numpy()  # E_x[P(z = 0 | x)]
    assert 0.1 < want.min() and want.max() < 0.9
    assert np.abs(zeros - want).max() < 4 * math.sqrt(0.25 / x.shape[0])


def test_informative_units_beside_much_stronger_ones_are_not_dead():
    # many units of 0.1-0.8 nats and a few of 2-13 nats: two clusters a decade
    # apart, but none of them is dead (a low-beta P-VAE of the quick preset)
    kl = np.concatenate([np.linspace(0.14, 0.8, 57), [2.4, 3.9, 4.3, 6.9, 7.5, 10.2, 13.0]])
    assert split_by_life(kl)["dead_fraction"] == 0.0
    # the per-unit KL of that run (quick preset, P-VAE K = 64, beta = 0.01; nats, rounded):
    # the zoo's gap rule finds the gap but may not place a threshold above 0.1 nats
    from poissonvae.dead_units import DEAD_CEILING, dead_threshold

    measured = np.array([
        0.144, 0.233, 0.246, 0.3, 0.305, 0.324, 0.357, 0.359, 0.375, 0.388, 0.398, 0.403, 0.404, 0.406, 0.409,
        0.41, 0.418, 0.424, 0.425, 0.435, 0.436, 0.437, 0.445, 0.445, 0.48, 0.48, 0.48, 0.481, 0.489, 0.491,
        0.495, 0.496, 0.497, 0.52, 0.529, 0.529, 0.536, 0.545, 0.545, 0.551, 0.551, 0.563, 0.576, 0.579, 0.614,
        0.621, 0.622, 0.624, 0.628, 0.637, 0.645, 0.651, 0.652, 0.716, 0.772, 0.778, 0.814, 2.409, 3.886, 4.322,
        6.862, 7.504, 10.197, 13.033])
    uncapped = dead_threshold(measured, ceiling=np.inf)
    assert 0.814 < uncapped < 2.409  # the gap rule alone would call 57 of 64 informative units dead
    assert dead_threshold(measured) == DEAD_CEILING < measured.min()
    assert split_by_life(measured)["dead_fraction"] == 0.0
    with pytest.raises(ValueError, match="finite"):
        split_by_life([0.1, float("nan")])
