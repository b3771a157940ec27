"""The G-VAE+exp and C-VAE latent families (P-VAE paper, sec. 4 "Alternative models")
against independent computations: scipy's log-normal and KL, brute-force sums over
categories, numpy/torch Monte Carlo that does not call the family; then through
the stacked model, the trainer and evaluation."""

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

import poissonvae.functional as F
from poissonvae.config import ModelConfig, TrainConfig
from poissonvae.evaluation import evaluate
from poissonvae.families import get_family
from poissonvae.families.gaussian_exp import LOG_SCALE_MAX, MU_MAX
from poissonvae.models import LinearVAE
from poissonvae.training import Trainer

f64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _expand(post: dict, S: int) -> dict:
    """The same posterior repeated over a leading sample axis ``S``."""
    return {k: v.unsqueeze(0).expand(S, *v.shape) for k, v in post.items()}


def _mc_mean_and_se(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the first axis and its standard error."""
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


# ------------------------------------------------------------------ gaussian_exp


def test_gaussian_exp_moments_are_the_log_normal_moments():
    fam = get_family("gaussian_exp")
    mu = np.array([-2.0, -0.3, 0.0, 0.7, 3.0])
    sigma = np.array([0.01, 0.5, 1.0, 1.5, 2.5])
    mean, var = fam.moments({"mu": torch.tensor(mu, dtype=f64), "sigma": torch.tensor(sigma, dtype=f64)})
    ref = stats.lognorm(s=sigma, scale=np.exp(mu))
    np.testing.assert_allclose(mean.numpy(), ref.mean(), rtol=1e-10)
    np.testing.assert_allclose(var.numpy(), ref.var(), rtol=1e-9)
    # and Monte Carlo of exp(N(mu, s^2)), drawn with numpy
    mu, sigma = np.array([-0.5, 0.0, 0.4]), np.array([0.2, 0.4, 0.6])
    h = np.exp(mu + sigma * np.random.default_rng(0).standard_normal((400_000, 3)))
    mean, var = fam.moments({"mu": torch.tensor(mu, dtype=f64), "sigma": torch.tensor(sigma, dtype=f64)})
    se = h.std(0) / math.sqrt(h.shape[0])
    assert np.all(np.abs(h.mean(0) - mean.numpy()) < 5 * se)
    np.testing.assert_allclose(h.var(0), var.numpy(), rtol=0.03)


def test_gaussian_exp_posterior_is_residual_on_a_fixed_standard_normal_prior():
    fam = get_family("gaussian_exp")
    assert fam.n_params == 2 and not fam.learn_prior_default and not fam.uses_temperature
    prior = fam.init_prior(2, 3, _gen(0))
    assert set(prior) == {"mu", "log_sigma"} and all(v.shape == (2, 3) and not v.any() for v in prior.values())
    enc = torch.tensor([[[0.3, -1.0, 2.0, 0.05, -2.0, 0.02]]], dtype=f64).expand(2, 4, 6)
    post = fam.posterior(enc, {k: v.double() for k, v in prior.items()})
    assert post["mu"].shape == post["sigma"].shape == (2, 4, 3)
    # eq. (5) away from the guards: mu = delta_mu, sigma = exp(delta_v)
    assert torch.allclose(post["mu"], enc[..., :3], atol=1e-3)
    assert torch.allclose(post["sigma"][..., [0, 2]], torch.exp(enc[..., [3, 5]]), rtol=1e-3)
    assert torch.allclose(post["sigma"][..., 1], torch.exp(5.3 * torch.tanh(enc[..., 4] / 5.3)))  # shared lower guard
    # the KL at the prior is zero
    at_prior = fam.posterior(torch.zeros(2, 4, 6, dtype=f64), {k: v.double() for k, v in prior.items()})
    assert fam.kl(at_prior).abs().max() < 1e-8


def test_gaussian_exp_stays_finite_at_the_default_init_and_at_the_guards():
    # default init (N(0, 0.05^2) weights) on z-scored 256-d data, K = 512, float32
    x = torch.randn(1000, 256, generator=_gen(1))
    x = (x - x.mean(0)) / x.std(0)
    model = LinearVAE(ModelConfig(family="gaussian_exp", K=512), seeds=[0])
    with torch.no_grad():
        out = model(x, "exact")
        mean, var = model.family.moments(model.encode(x))
    assert torch.isfinite(out.recon).all() and torch.isfinite(out.kl).all()
    assert torch.isfinite(mean).all() and torch.isfinite(var).all()
    # extreme encoder output: the guards bound mu and sigma, moments stay finite in float32
    fam = model.family
    prior = fam.init_prior(1, 3, _gen(0))
    enc = torch.tensor([[[1e4, -1e4, 50.0, 1e4, -1e4, 50.0]]])
    post = fam.posterior(enc, prior)
    assert post["mu"].max() <= MU_MAX and post["sigma"].max() <= math.exp(LOG_SCALE_MAX) * (1 + 1e-6)
    mean, var = fam.moments(post)
    assert torch.isfinite(mean).all() and torch.isfinite(var).all() and torch.isfinite(fam.kl(post)).all()
    # the worst case: every unit at both bounds, K = 2048, column norms 10
    K, D = 2048, 256
    top = {"mu": torch.full((1, 2, K), MU_MAX), "sigma": torch.full((1, 2, K), math.exp(LOG_SCALE_MAX))}
    mean, var = fam.moments(top)
    signs = torch.randint(0, 2, (1, D, K), generator=_gen(2)).float() * 2 - 1
    recon = fam.linear_reconstruction(torch.zeros(2, D), signs * math.sqrt(10 / D), mean, var)
    assert torch.isfinite(recon).all()


def test_gaussian_exp_kl_is_the_kl_of_the_log_normal_decoder_input():
    fam = get_family("gaussian_exp")
    mu = np.array([-0.7, 0.0, 0.5, 1.2])
    sigma = np.array([0.3, 1.0, 0.6, 1.4])
    t = lambda a: torch.tensor(a, dtype=f64)  # noqa: E731
    post = {"mu": t(mu), "sigma": t(sigma), "prior_mu": t(np.zeros(4)), "prior_sigma": t(np.ones(4))}
    closed = fam.kl(post).numpy()
    # textbook KL(N(mu, s^2) || N(0, 1)) of g
    np.testing.assert_allclose(closed, -np.log(sigma) + (sigma**2 + mu**2) / 2 - 0.5, rtol=1e-12, atol=1e-14)
    # Monte Carlo in h-space with scipy's log-normal densities: E_q[log q(h) - log p(h)]
    h = np.exp(mu + sigma * np.random.default_rng(3).standard_normal((200_000, 4)))
    log_ratio = stats.lognorm.logpdf(h, s=sigma, scale=np.exp(mu)) - stats.lognorm.logpdf(h, s=1.0)
    se = log_ratio.std(0) / math.sqrt(h.shape[0])
    assert np.all(np.abs(log_ratio.mean(0) - closed) < 5 * se + 1e-9)


def test_gaussian_exp_closed_form_reconstruction_matches_monte_carlo():
    fam = get_family("gaussian_exp")
    g = _gen(4)
    M, B, D, K = 2, 3, 8, 5
    x = torch.randn(B, D, generator=g, dtype=f64)
    phi = torch.randn(M, D, K, generator=g, dtype=f64) * 0.5
    mu = torch.rand(M, B, K, generator=g, dtype=f64) * 1.5 - 1.0
    sigma = torch.rand(M, B, K, generator=g, dtype=f64) * 0.5 + 0.1
    mean, var = fam.moments({"mu": mu, "sigma": sigma})
    exact = fam.linear_reconstruction(x, phi, mean, var)  # (M, B)
    S = 100_000  # independent samples of h = exp(mu + sigma eps), not the family's sampler
    h = torch.exp(mu + sigma * torch.randn(S, M, B, K, generator=g, dtype=f64))
    err = ((x - torch.einsum("smbk,mdk->smbd", h, phi)) ** 2).sum(-1)
    mc, se = _mc_mean_and_se(err)
    assert exact.shape == (M, B) and (torch.abs(mc - exact) < 5 * se).all()


def test_gaussian_exp_samples_are_log_normal_and_follow_the_generator():
    fam = get_family("gaussian_exp")
    N = 20_000
    mu = torch.tensor([0.3, -1.0], dtype=f64).expand(1, N, 2).clone().requires_grad_(True)
    sigma = torch.tensor([0.5, 1.2], dtype=f64).expand(1, N, 2)
    post = {"mu": mu, "sigma": sigma}
    h = fam.sample(post, _gen(5))
    assert not h.requires_grad and (h > 0).all()
    z = ((torch.log(h) - mu) / sigma).detach().numpy()[0]
    for j in range(2):
        assert stats.kstest(z[:, j], "norm").pvalue > 1e-3
    # temperature and hard mean nothing for a continuous family; rsample is differentiable
    r = fam.rsample(post, 0.7, hard=True, generator=_gen(5))
    assert torch.equal(r.detach(), h) and torch.equal(fam.sample(post, _gen(5)), h)
    assert not torch.equal(fam.sample(post, _gen(6)), h)
    r.sum().backward()
    assert torch.isfinite(mu.grad).all() and (mu.grad > 0).all()


# ------------------------------------------------------------------- categorical


def test_categorical_kl_is_the_kl_to_the_uniform_prior():
    fam = get_family("categorical")
    assert fam.n_params == 1 and not fam.learn_prior_default and fam.uses_temperature
    K = 7
    prior = fam.init_prior(2, K, _gen(0))
    assert set(prior) == {"logits"} and prior["logits"].shape == (2, K)
    np.testing.assert_allclose(special.softmax(prior["logits"].numpy(), axis=-1), 1.0 / K, rtol=1e-6)
    enc = torch.randn(2, 5, K, generator=_gen(1), dtype=f64) * 3
    enc[0, 0] = torch.tensor([60.0, 0, 0, 0, 0, 0, 0])  # almost one-hot: p underflows off the peak
    enc[0, 1] = torch.tensor([1e4, -1e4, 0, 0, 0, 0, 0])
    enc[1, 0] = 2.5  # uniform posterior
    post = fam.posterior(enc, {k: v.double() for k, v in prior.items()})
    per_category = fam.kl(post)
    assert per_category.shape == (2, 5, K) and torch.isfinite(per_category).all()
    p = special.softmax(enc.numpy(), axis=-1)
    ref = stats.entropy(p, np.full(K, 1.0 / K), axis=-1)  # scipy's sum_k p_k log(p_k / q_k)
    np.testing.assert_allclose(per_category.sum(-1).numpy(), ref, rtol=1e-10, atol=1e-12)
    assert abs(ref[0, 1] - math.log(K)) < 1e-12 and abs(per_category[1, 0].sum()) < 1e-12


def test_categorical_posterior_is_residual_on_the_prior_logits():
    fam = get_family("categorical")
    pi = np.array([0.5, 0.3, 0.2])
    prior = {"logits": torch.tensor(np.log(pi) + 1.7).reshape(1, 3)}  # unnormalised, as a learned prior may be
    enc = torch.tensor([[[0.4, -1.0, 2.0], [0.0, 0.0, 0.0]]], dtype=f64)
    post = fam.posterior(enc, prior)
    q = pi * np.exp(enc.numpy()[0])
    q /= q.sum(-1, keepdims=True)
    np.testing.assert_allclose(torch.exp(post["log_probs"])[0].numpy(), q, rtol=1e-12)
    np.testing.assert_allclose(fam.kl(post).sum(-1)[0].numpy(), stats.entropy(q, pi, axis=-1), rtol=1e-10, atol=1e-14)
    mean, var = fam.moments(post)
    np.testing.assert_allclose(mean[0].numpy(), q, rtol=1e-12)
    np.testing.assert_allclose(var[0].numpy(), q * (1 - q), rtol=1e-12)


def test_categorical_reconstruction_is_the_one_hot_expectation():
    fam = get_family("categorical")
    g = _gen(2)
    M, B, D, K = 2, 4, 6, 5
    x = torch.randn(B, D, generator=g, dtype=f64)
    phi = torch.randn(M, D, K, generator=g, dtype=f64)
    enc = torch.randn(M, B, K, generator=g, dtype=f64) * 1.5
    post = fam.posterior(enc, {"logits": torch.zeros(M, K, dtype=f64)})
    mean, var = fam.moments(post)
    closed = fam.linear_reconstruction(x, phi, mean, var)
    assert closed.shape == (M, B)
    # brute force over the K one-hot states: sum_k p_k ||x - phi_k||^2
    p, xn, phin = special.softmax(enc.numpy(), axis=-1), x.numpy(), phi.numpy()
    brute = np.array([[sum(p[m, b, k] * np.sum((xn[b] - phin[m, :, k]) ** 2) for k in range(K))
                       for b in range(B)] for m in range(M)])
    np.testing.assert_allclose(closed.numpy(), brute, rtol=1e-12)
    # the independent-units formula (eq. 17 as printed) is wrong for one categorical variable
    assert not np.allclose(F.linear_reconstruction(x, phi, mean, var).numpy(), brute, rtol=1e-3)
    # Monte Carlo with exact samples
    S = 100_000
    h = fam.sample(_expand(post, S), _gen(3))  # (S, M, B, K)
    err = ((x - torch.einsum("smbk,mdk->smbd", h, phi)) ** 2).sum(-1)
    mc, se = _mc_mean_and_se(err)
    assert (torch.abs(mc - closed) < 5 * se).all()


def _fixed_post(p: list[float], N: int) -> dict:
    log_p = torch.log(torch.tensor(p, dtype=f64)).expand(1, N, len(p))
    return {"log_probs": log_p, "log_prior": torch.full((1, 1, len(p)), -math.log(len(p)), dtype=f64)}


def _is_one_hot(h: torch.Tensor) -> bool:
    return bool(((h == 0) | (h == 1)).all() and (h.sum(-1) == 1).all())


def test_categorical_exact_samples_have_frequencies_p_and_follow_the_generator():
    fam = get_family("categorical")
    p = [0.4, 0.25, 0.15, 0.1, 0.07, 0.03]
    N = 100_000
    post = _fixed_post(p, N)
    h = fam.sample(post, _gen(5))
    assert h.shape == (1, N, 6) and _is_one_hot(h) and not h.requires_grad
    counts = h.sum((0, 1)).numpy()
    assert stats.chisquare(counts, N * np.array(p)).pvalue > 1e-3
    assert torch.equal(fam.sample(post, _gen(5)), h) and not torch.equal(fam.sample(post, _gen(6)), h)
    # temperature 0 is the relaxation's limit: exact one-hot samples, no gradient
    h0 = fam.rsample(post, 0.0, generator=_gen(7))
    assert _is_one_hot(h0) and not h0.requires_grad
    assert stats.chisquare(h0.sum((0, 1)).numpy(), N * np.array(p)).pvalue > 1e-3


def test_gumbel_softmax_tends_to_exact_one_hot_samples_as_temperature_falls():
    fam = get_family("categorical")
    p = np.array([0.5, 0.3, 0.15, 0.05])
    N = 50_000
    post = _fixed_post(list(p), N)
    distance = []
    for temperature in (1.0, 0.3, 0.05, 0.01):
        y = fam.rsample(post, temperature, generator=_gen(8))[0]  # (N, K)
        assert (y >= 0).all() and torch.allclose(y.sum(-1), torch.ones(N, dtype=f64))
        # the argmax of a Concrete sample is an exact Categorical(p) sample at every temperature
        counts = np.bincount(y.argmax(-1).numpy(), minlength=4)
        assert stats.chisquare(counts, N * p).pvalue > 1e-3
        d = float((1 - y.max(-1).values).mean())  # mean distance to the nearest one-hot vector
        distance.append(d)
        # |E y_k - p_k| <= E||y - onehot||_1 = 2 E[1 - max y], plus sampling error
        mean, se = _mc_mean_and_se(y)
        if temperature <= 0.05:
            assert (torch.abs(mean - torch.tensor(p)) <= 2 * d + 5 * se).all()
    assert distance == sorted(distance, reverse=True) and distance[-1] < 0.01 and distance[0] > 0.1


def test_straight_through_is_one_hot_forward_with_the_relaxed_gradient():
    fam = get_family("categorical")
    enc = torch.randn(1, 50, 5, generator=_gen(9), dtype=f64, requires_grad=True)
    prior = {"logits": torch.zeros(1, 5, dtype=f64)}
    w = torch.randn(5, generator=_gen(10), dtype=f64)
    y = fam.rsample(fam.posterior(enc, prior), 0.5, hard=True, generator=_gen(11))
    assert _is_one_hot(y) and y.requires_grad
    (y * w).sum().backward()
    g_hard = enc.grad.clone()
    assert torch.isfinite(g_hard).all() and g_hard.abs().sum() > 0
    # the backward pass is the relaxed sample's (same noise), and its argmax is the forward's
    enc.grad = None
    soft = fam.rsample(fam.posterior(enc, prior), 0.5, hard=False, generator=_gen(11))
    assert torch.equal(soft.argmax(-1), y.argmax(-1))
    (soft * w).sum().backward()
    assert torch.allclose(enc.grad, g_hard)


def test_new_families_reject_bad_input():
    cat, gexp = get_family("categorical"), get_family("gaussian_exp")
    prior = cat.init_prior(1, 4, _gen(0))
    with pytest.raises(ValueError, match="needs K = 4"):
        cat.posterior(torch.zeros(1, 2, 5), prior)
    with pytest.raises(ValueError, match="K >= 1"):
        cat.init_prior(1, 0, _gen(0))
    post = cat.posterior(torch.zeros(1, 2, 4), prior)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="temperature must be >= 0"):
            cat.rsample(post, bad)
    mean, var = cat.moments(post)
    with pytest.raises(ValueError, match="shapes do not match"):
        cat.linear_reconstruction(torch.zeros(2, 7), torch.zeros(1, 6, 4), mean, var)
    with pytest.raises(ValueError, match="shapes do not match"):
        cat.linear_reconstruction(torch.zeros(2, 6), torch.zeros(1, 6, 3), mean, var)
    with pytest.raises(ValueError, match="needs 2 \\* K"):
        gexp.posterior(torch.zeros(1, 2, 4), gexp.init_prior(1, 4, _gen(0)))


# ------------------------------------------------------- through model and trainer


@pytest.mark.parametrize("family", ["gaussian_exp", "categorical"])
def test_model_exact_objective_matches_the_sampled_average(family):
    """LinearVAE's closed-form reconstruction (the family's hook) equals the MC average over exact samples."""
    init_std = 0.05 if family == "gaussian_exp" else 0.3  # residuals ~ N(0, 0.2^2) for the log-normal
    model = LinearVAE(ModelConfig(family=family, K=6, input_dim=16, init_std=init_std), seeds=[3, 4]).double()
    if family == "gaussian_exp":
        with torch.no_grad():
            model.prior_log_sigma.fill_(-1.0)  # sigma ~ 0.37: light log-normal tails, a tight MC check
    x = torch.randn(3, 16, generator=_gen(12), dtype=f64)
    with torch.no_grad():
        exact = model(x, "exact").recon
        h = model.family.sample(_expand(model.encode(x), 50_000), _gen(13))  # (S, M, B, K)
        err = ((x - torch.einsum("smbk,mdk->smbd", h, model.dictionary)) ** 2).sum(-1)
    mc, se = _mc_mean_and_se(err)
    assert (torch.abs(mc - exact) < 5 * se).all()


@pytest.mark.parametrize(
    "family, estimator",
    [("gaussian_exp", "exact"), ("gaussian_exp", "mc"), ("categorical", "exact"), ("categorical", "mc"),
     ("categorical", "st")],
)
def test_new_families_train_and_evaluate(family, estimator):
    x = torch.randn(500, 16, generator=_gen(14))
    model = LinearVAE(ModelConfig(family=family, K=6, input_dim=16), seeds=[0, 1])
    before = model.dictionary.detach().clone()
    cfg = TrainConfig(epochs=2, warmup_epochs=1, batch_size=100, checkpoint_every=1, estimator=estimator)
    history = Trainer(model, cfg, x[:400], betas=[0.5, 2.0]).fit(progress=False)
    assert len(history) == 3
    assert all(math.isfinite(v) for r in history for key in ("loss", "recon", "kl") for v in r[key])
    assert not torch.equal(model.dictionary.detach(), before)
    metrics = evaluate(model, x[400:])
    for key in ("mse", "r2", "metabolic_cost", "proportion_zeros", "overall_performance", "recon", "kl",
                "neg_elbo", "lifetime_sparsity"):
        assert len(metrics[key]) == 2 and all(math.isfinite(v) for v in metrics[key]), key
    assert all(math.isfinite(v) for row in metrics["per_unit_kl"] for v in row)
    if family == "categorical":  # one unit fires per input
        assert metrics["metabolic_cost"] == pytest.approx([1 / 6, 1 / 6])
        assert metrics["proportion_zeros"] == pytest.approx([5 / 6, 5 / 6])
