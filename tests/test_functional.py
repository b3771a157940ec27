"""Closed forms of poissonvae.functional against independent computations:
direct summation, Monte Carlo and numerical integration (scipy)."""

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate, stats

import poissonvae.functional as F


def test_poisson_kl_matches_direct_summation_over_counts():
    rates = [(0.01, 0.5), (0.3, 0.3), (2.0, 0.05), (7.5, 12.0), (40.0, 3.0)]
    for lam, lam0 in rates:
        k = np.arange(0, 400)
        q = stats.poisson.pmf(k, lam)
        direct = np.sum(q * (stats.poisson.logpmf(k, lam) - stats.poisson.logpmf(k, lam0)))
        ours = F.poisson_kl(torch.tensor(lam, dtype=torch.float64), torch.tensor(lam0, dtype=torch.float64))
        assert ours.item() == pytest.approx(direct, rel=1e-9, abs=1e-12)
        log_form = F.poisson_kl_from_log(torch.tensor(math.log(lam), dtype=torch.float64), torch.tensor(math.log(lam0), dtype=torch.float64))
        assert log_form.item() == pytest.approx(direct, rel=1e-9, abs=1e-12)


def test_poisson_kl_zero_rate_limit_and_metabolic_scaling():
    # rate -> 0: KL -> prior rate (all mass at 0)
    assert F.poisson_kl(torch.tensor(0.0), torch.tensor(0.7)).item() == pytest.approx(0.7)
    # eq. (8): proportional to the prior rate at a fixed residual
    lam0 = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    kl = F.poisson_kl(3.0 * lam0, lam0)
    assert torch.allclose(kl / lam0, torch.full_like(kl, 3 * math.log(3) - 3 + 1))


def test_gaussian_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    cases = [(0.3, 0.5, 0.0, 1.0), (-2.0, 2.0, 1.0, 0.7), (1.5, 0.1, 1.2, 0.3)]
    for mu, s, mu0, s0 in cases:
        z = mu + s * torch.randn(2_000_000, generator=g, dtype=torch.float64)
        log_q = torch.distributions.Normal(mu, s).log_prob(z)
        log_p = torch.distributions.Normal(mu0, s0).log_prob(z)
        mc = (log_q - log_p).mean().item()
        se = (log_q - log_p).std().item() / math.sqrt(z.numel())
        closed = F.gaussian_kl(*(torch.tensor(v, dtype=torch.float64) for v in (mu, s, mu0, s0))).item()
        assert abs(closed - mc) < 5 * se + 1e-9


def _relu_moments_by_quadrature(mu, sigma):
    # integrate over the standardised variable u = (z - mu) / sigma on z > 0
    zeta = mu / sigma
    m1 = integrate.quad(lambda u: (zeta + u) * stats.norm.pdf(u), -zeta, np.inf, epsabs=0, epsrel=1e-11, limit=400)[0]
    m2 = integrate.quad(lambda u: (zeta + u) ** 2 * stats.norm.pdf(u), -zeta, np.inf, epsabs=0, epsrel=1e-11, limit=400)[0]
    return sigma * m1, sigma**2 * (m2 - m1**2)


@pytest.mark.parametrize("zeta", [-35.0, -20.0, -8.0, -3.0, -0.5, 0.0, 0.5, 2.0, 4.0])
@pytest.mark.parametrize("sigma", [1e-6, 0.3, 2.0])
def test_relu_moments_match_numerical_integration(zeta, sigma):
    mu = zeta * sigma
    m_ref, v_ref = _relu_moments_by_quadrature(mu, sigma)
    m, v = F.relu_moments(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64))
    assert m.item() == pytest.approx(m_ref, rel=1e-7, abs=1e-300)
    assert v.item() == pytest.approx(v_ref, rel=1e-6, abs=1e-300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_moments_limits_are_finite_and_correct(dtype):
    sigma = torch.tensor([1e-6, 1e-3, 1.0, 5.0], dtype=dtype)
    for zeta in (40.0, 1e4):  # far right: relu is the identity
        m, v = F.relu_moments(zeta * sigma, sigma)
        assert torch.allclose(m, zeta * sigma, rtol=1e-6)
        assert torch.allclose(v, sigma**2, rtol=1e-5)
    for zeta in (-40.0, -1e4):  # far left: relu is always 0
        m, v = F.relu_moments(zeta * sigma, sigma)
        assert torch.all(m >= 0) and torch.all(v >= 0)
        assert torch.all(m <= 1e-30 * sigma) and torch.all(v <= 1e-30 * sigma**2)
    mu = torch.linspace(-50, 50, 2001, dtype=dtype, requires_grad=True)
    m, v = F.relu_moments(mu, torch.full_like(mu, 1.0))
    assert torch.isfinite(m).all() and torch.isfinite(v).all() and (v >= 0).all()
    (m.sum() + v.sum()).backward()
    assert torch.isfinite(mu.grad).all()


def _relu_terms_reference(zeta):
    # 50-digit arithmetic: no cancellation or underflow to worry about
    z = mpmath.mpf(zeta)
    cdf, pdf = mpmath.ncdf(z), mpmath.npdf(z)
    m = z * cdf + pdf
    return [float(m), float((z * z + 1) * cdf + z * pdf - m * m), float(cdf), float(pdf)]


@pytest.mark.parametrize("indexed_below", [1.0, 0.0], ids=["indexed", "blended"])
def test_relu_moment_terms_match_50_digit_arithmetic_across_both_regimes(monkeypatch, indexed_below):
    """Mean, variance, Phi and phi of relu(N(zeta, 1)), on a grid that crosses the
    erfc / continued-fraction switch (|zeta| = 7 in float32, 8 in float64) and both signs,
    with the continued fraction on the far entries alone (the CPU's path for training
    batches) and blended over all of them."""
    monkeypatch.setattr(F, "INDEXED_BELOW", indexed_below)
    edges = [s * (e + d) for s in (-1, 1) for e in (7.0, 8.0) for d in (-1e-3, 0.0, 1e-3)]
    zetas = sorted(set(np.linspace(-14, 14, 113).tolist() + edges + [-1e4, -40.0, -35.0, -20.0, 20.0, 40.0, 1e4]))
    ref = torch.tensor([_relu_terms_reference(z) for z in zetas], dtype=torch.float64)
    z = torch.tensor(zetas, dtype=torch.float64)
    got64 = torch.stack(F.relu_moment_terms(z), -1)
    rel64 = (got64 - ref).abs() / ref.abs().clamp(min=1e-300)
    assert rel64.max() < 1e-9, rel64.max(0)
    got32 = torch.stack(F.relu_moment_terms(z.float()), -1).double()
    normal = (ref.abs() > 1e-30) & (z > -3).unsqueeze(-1)  # float32 precision, bar the left tail and underflow
    assert ((got32 - ref).abs() / ref.abs())[normal].max() < 2e-5
    assert ((got32 - ref).abs() <= 1e-6 * (1 + z.abs().unsqueeze(-1))).all()  # and small absolute error anywhere
    assert (got32[:, :2] >= 0).all()
    # where a^2 overflows (float32 above ~1.8e19) the erfc regime would give inf * 0
    huge = torch.tensor([-1e30, -3e19, 3e19, 1e30])
    mean, var, cdf, pdf = F.relu_moment_terms(huge)
    torch.testing.assert_close(mean, huge.clamp(min=0))
    torch.testing.assert_close(torch.stack([var, pdf]), torch.tensor([[0.0, 0, 1, 1], [0, 0, 0, 0]]))
    torch.testing.assert_close(cdf, torch.tensor([0.0, 0, 1, 1]))


def test_relu_moments_gradient_matches_finite_differences():
    mu = torch.tensor([-6.0, -1.0, 0.2, 3.0], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.7, 1.3, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: F.relu_moments(a, b), (mu, sigma))


def _mc_reconstruction(x, phi, h):
    return ((x.unsqueeze(0) - h @ phi.T) ** 2).sum(-1).mean(0)


def test_linear_reconstruction_matches_monte_carlo_poisson():
    g = torch.Generator().manual_seed(1)
    D, K, B, S = 9, 6, 4, 200_000
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    phi = torch.randn(D, K, generator=g, dtype=torch.float64) * 0.5
    rate = torch.rand(B, K, generator=g, dtype=torch.float64) * 3
    h = torch.poisson(rate.expand(S, B, K).contiguous(), generator=g)
    mc = _mc_reconstruction(x, phi, h)
    closed = F.linear_reconstruction(x, phi, rate, rate)
    assert torch.allclose(closed, mc, rtol=0.01)


def test_linear_reconstruction_matches_monte_carlo_rectified_gaussian():
    g = torch.Generator().manual_seed(2)
    D, K, B, S = 9, 6, 4, 200_000
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    phi = torch.randn(D, K, generator=g, dtype=torch.float64) * 0.5
    mu = torch.randn(B, K, generator=g, dtype=torch.float64)
    sigma = torch.rand(B, K, generator=g, dtype=torch.float64) + 0.2
    h = torch.relu(mu + sigma * torch.randn(S, B, K, generator=g, dtype=torch.float64))
    mc = _mc_reconstruction(x, phi, h)
    closed = F.linear_reconstruction(x, phi, *F.relu_moments(mu, sigma))
    assert torch.allclose(closed, mc, rtol=0.01)


def test_linear_reconstruction_broadcasts_over_models():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 4, generator=g)
    phi = torch.randn(3, 4, 2, generator=g)
    m = torch.rand(3, 5, 2, generator=g)
    stacked = F.linear_reconstruction(x, phi, m, m)
    for i in range(3):
        assert torch.allclose(stacked[i], F.linear_reconstruction(x, phi[i], m[i], m[i]))


def test_poisson_n_exp_bounds_truncation_error():
    for rate in (0.0, 0.01, 1.0, 20.0, 148.0):
        n = F.poisson_n_exp(rate, tol=1e-5)
        assert stats.poisson.sf(n - 1, rate) <= 1e-5  # P(N >= n) <= tol
        if n > 1:
            assert stats.poisson.sf(n - 3, rate) > 1e-5 or n <= 2  # and not much larger than needed
    with pytest.raises(ValueError, match="max_rate"):
        F.poisson_n_exp(float("nan"))


@pytest.mark.parametrize("indicator", ["cubic", "sigmoid"])
def test_relaxed_poisson_moments_approach_rate_as_temperature_falls(indicator):
    """Mean and variance of relaxed samples -> rate as T -> 0 (P-VAE Fig. 3).

    Errors are in units of the Monte Carlo standard error of a sample mean
    (sqrt(rate / n)) and a sample variance (sqrt((rate + 2 rate^2) / n)).
    """
    g = torch.Generator().manual_seed(4)
    n = 100_000
    lam = torch.tensor([0.05, 0.5, 2.0, 6.0])
    rate = lam.expand(n, 4).contiguous()
    se_mean, se_var = (lam / n).sqrt(), ((lam + 2 * lam**2) / n).sqrt()
    errors = {}
    for temperature in (0.5, 0.01, 0.001):
        z = F.poisson_rsample(rate, temperature, indicator, generator=g)
        errors[temperature] = max(((z.mean(0) - lam).abs() / se_mean).max().item(),
                                  ((z.var(0) - lam).abs() / se_var).max().item())
    assert errors[0.5] > 10  # a visible bias at high temperature ...
    assert errors[0.01] < 4.5 and errors[0.001] < 4.5  # ... gone within MC error as T -> 0


def test_poisson_rsample_cubic_is_exact_step_outside_band_and_zero_temperature_is_integer():
    g = torch.Generator().manual_seed(5)
    rate = torch.full((50_000,), 1.5)
    z0 = F.poisson_rsample(rate, 0.0, generator=g)
    assert torch.equal(z0, z0.round()) and not z0.requires_grad
    assert z0.mean().item() == pytest.approx(1.5, abs=0.03)
    # the cubic indicator is exactly 0/1 outside |1 - t| < T
    s = torch.tensor([-3.0, -1.0, -0.999, 0.0, 0.999, 1.0, 3.0])
    ind = F._soft_indicator(s, "cubic")
    assert ind[0] == 0 and ind[1] == 0 and ind[-1] == 1 and ind[-2] == 1 and ind[3] == 0.5


def test_poisson_rsample_hard_is_integer_forward_with_relaxed_gradient():
    rate = torch.full((1000,), 2.0, requires_grad=True)
    g = torch.Generator().manual_seed(6)
    z = F.poisson_rsample(rate, 0.1, hard=True, generator=g)
    assert torch.equal(z, z.round())
    z.sum().backward()
    assert rate.grad is not None and rate.grad.abs().sum() > 0


def test_mc_gradient_of_objective_approaches_exact_gradient():
    """d/d(lambda) E||x - Phi z||^2 by relaxed samples vs the closed form (eq. 17)."""
    g = torch.Generator().manual_seed(7)
    D, K = 6, 4
    x = torch.randn(1, D, generator=g, dtype=torch.float64)
    phi = torch.randn(D, K, generator=g, dtype=torch.float64) * 0.5
    log_rate = torch.tensor([[-1.0, 0.0, 0.5, 1.0]], dtype=torch.float64, requires_grad=True)

    rate = log_rate.exp()
    F.linear_reconstruction(x, phi, rate, rate).sum().backward()
    exact = log_rate.grad.clone()

    errs = []
    for temperature in (0.5, 0.05):
        log_rate.grad = None
        S = 200_000
        rate = log_rate.exp().expand(S, K)
        z = F.poisson_rsample(rate, temperature, "cubic", generator=g)
        (((x - z @ phi.T) ** 2).sum(-1).mean()).backward()
        errs.append((log_rate.grad - exact).norm().item() / exact.norm().item())
    assert errs[-1] < 0.05
    assert errs[-1] < errs[0]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="temperature"):
        F.poisson_rsample(torch.ones(3), -1.0)
    with pytest.raises(ValueError, match="indicator"):
        F.poisson_rsample(torch.ones(3), 0.1, indicator="step")


def test_linear_reconstruction_gradients_match_autograd_of_the_formula():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)  # shared by 3 models
    phi = torch.randn(3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    m = torch.rand(3, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.rand(3, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(F.linear_reconstruction, (x, phi, m, v))
    # and the values equal the plain formula, eq. (17)
    plain = ((x - m @ phi.transpose(-1, -2)) ** 2).sum(-1) + (v * (phi**2).sum(-2).unsqueeze(-2)).sum(-1)
    assert torch.allclose(F.linear_reconstruction(x, phi, m, v), plain)
