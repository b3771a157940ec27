"""Latent families and the stacked linear VAE against independent computations."""

import math

import pytest
import torch

import poissonvae.functional as F
from poissonvae.config import ConfigError, ModelConfig
from poissonvae.families import get_family
from poissonvae.models import LinearVAE


def _data(n=64, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 1000))


def test_poisson_posterior_is_residual_on_prior_and_kl_is_eq_28():
    fam = get_family("poisson")
    prior = {"log_rate": torch.tensor([[-5.0, -4.0, -3.0]])}
    u = torch.tensor([[[0.3, -1.0, 1.0]]])
    post = fam.posterior(u, prior)
    rate = torch.exp(post["log_rate"])
    # eq. (4): lambda = lambda0 * exp(u), away from the soft clamps
    assert torch.allclose(rate, torch.exp(prior["log_rate"] + u), rtol=2e-3)
    assert torch.allclose(fam.kl(post), F.poisson_kl(rate, torch.exp(post["log_prior_rate"])), rtol=1e-4)


def test_gaussian_posterior_is_residual_on_prior():
    fam = get_family("gaussian_relu")
    prior = {"mu": torch.tensor([[0.5, -0.2]]), "log_sigma": torch.tensor([[0.1, -0.3]])}
    enc = torch.tensor([[[0.2, -0.1, 0.05, 0.2]]])  # delta_mu (2), delta_v (2)
    post = fam.posterior(enc, prior)
    assert torch.allclose(post["mu"], prior["mu"] + enc[..., :2])  # eq. (5)
    assert torch.allclose(post["sigma"], torch.exp(prior["log_sigma"] + enc[..., 2:]), rtol=1e-3)


def test_unknown_family_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="unknown latent family 'laplacian'"):
        get_family("laplacian")
    with pytest.raises(ConfigError, match="model.K"):
        LinearVAE(ModelConfig(K=0, input_dim=16))
    with pytest.raises(ConfigError, match="unknown latent family"):
        LinearVAE(ModelConfig(family="nope", input_dim=16))


@pytest.mark.parametrize("family", ["poisson", "gaussian", "gaussian_relu", "laplace"])
def test_exact_reconstruction_matches_sampled_average(family):
    """The closed-form L_recon (eq. 21) equals the average of ||x - Phi h||^2 over exact samples."""
    model = LinearVAE(ModelConfig(family=family, K=8, input_dim=16, init_std=0.3), seeds=[3])
    with torch.no_grad():
        if family == "poisson":
            model.prior_log_rate.fill_(0.0)  # rates ~ 1, a non-trivial Poisson
    model = model.double()
    x = _data(4).double()
    exact = model(x, "exact").recon
    post = model.encode(x)
    g = torch.Generator().manual_seed(0)
    S = 40_000
    total = torch.zeros_like(exact)
    for _ in range(4):
        h = model.family.sample({k: v.expand(S // 4, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in post.items()}, g)
        total += ((x - h @ model.dictionary[0].T) ** 2).sum(-1).mean(0, keepdim=True)
    assert torch.allclose(exact, total / 4, rtol=0.02)


def test_stacked_models_equal_models_alone():
    cfg = ModelConfig(family="gaussian_relu", K=6, input_dim=16)
    group = LinearVAE(cfg, seeds=[11, 12, 13])
    x = _data()
    out = group(x, "exact")
    for i, seed in enumerate([11, 12, 13]):
        alone = LinearVAE(cfg, seeds=[seed])
        for k, v in alone.state_dict().items():
            assert torch.equal(v[0], group.state_dict()[k][i])
        single = alone(x, "exact")
        assert torch.allclose(out.recon[i], single.recon[0], rtol=1e-5, atol=1e-5)
        assert torch.allclose(out.kl[i], single.kl[0], rtol=1e-5, atol=1e-6)


def test_mc_free_energy_approaches_exact_in_expectation():
    model = LinearVAE(ModelConfig(K=8, input_dim=16, init_std=0.3), seeds=[5])
    with torch.no_grad():
        model.prior_log_rate.fill_(-0.5)
    x = _data(8)
    exact = model(x, "exact").recon.mean().item()
    g = torch.Generator().manual_seed(1)
    mc = torch.stack([model(x, "mc", temperature=0.05, generator=g).recon.mean() for _ in range(300)]).mean().item()
    assert mc == pytest.approx(exact, rel=0.02)


def test_fixed_prior_of_plain_gaussian_is_a_buffer():
    model = LinearVAE(ModelConfig(family="gaussian", K=4, input_dim=16))
    names = {n for n, _ in model.named_parameters()}
    assert names == {"encoder", "dictionary"}
    learned = LinearVAE(ModelConfig(family="gaussian", K=4, input_dim=16, learn_prior=True))
    assert {"prior_mu", "prior_log_sigma"} <= {n for n, _ in learned.named_parameters()}
    assert math.isclose(float(model.prior_log_sigma.abs().max()), 0.0)


@pytest.mark.parametrize("family", ["poisson", "gaussian", "gaussian_relu", "laplace"])
def test_fused_exact_terms_equal_the_composition_values_and_gradients(family):
    """exact_terms (fused for Poisson) == posterior -> moments, kl; checked with gradcheck."""
    fam = get_family(family)
    g = torch.Generator().manual_seed(0)
    M, B, K = 2, 5, 3
    enc = (torch.randn(M, B, fam.n_params * K, generator=g, dtype=torch.float64) * 3).requires_grad_()
    prior = {k: (v.double() + 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64)).requires_grad_()
             for k, v in fam.init_prior(M, K, g).items()}
    if family == "poisson":  # reach both soft clamps (log-rate 5, residual 10)
        with torch.no_grad():
            enc[0, 0, 0] = 12.0
            prior["log_rate"][1, 1] = 4.5
    post = fam.posterior(enc, prior)
    mean, var = fam.moments(post)
    reference = (mean, var, fam.kl(post).sum(-1))
    fused = fam.exact_terms(enc, prior)
    for a, b in zip(fused, reference):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    names = sorted(prior)

    def terms(e, *p):
        m, v, kl = fam.exact_terms(e, dict(zip(names, p)))
        return m, v, kl

    assert torch.autograd.gradcheck(terms, (enc, *[prior[n] for n in names]))


def test_fused_poisson_terms_are_accurate_in_float32():
    """Typical rates are lambda0 e^u with lambda0 ~ e^-5: the fused float32 path
    must match a float64 evaluation of eqs. (4), (8) to float32 precision."""
    fam = get_family("poisson")
    g = torch.Generator().manual_seed(1)
    enc = torch.randn(1, 200, 64, generator=g) * 3
    prior = {"log_rate": torch.rand(1, 64, generator=g) * 2 - 6}
    rate32, _, kl32 = fam.exact_terms(enc, prior)
    post = fam.posterior(enc.double(), {"log_rate": prior["log_rate"].double()})
    rate64 = torch.exp(post["log_rate"])
    kl64 = fam.kl(post).sum(-1)
    assert torch.allclose(rate32.double(), rate64, rtol=1e-5, atol=0)
    assert torch.allclose(kl32.double(), kl64, rtol=1e-4, atol=1e-6)


def test_laplace_kl_matches_monte_carlo():
    from poissonvae.families.laplace import laplace_kl

    for mu, b, mu0, b0 in [(0.3, 0.5, 0.0, 1.0), (-2.0, 2.0, 1.0, 0.7), (1.5, 0.1, 1.2, 0.3), (0.0, 1.0, 0.0, 1.0)]:
        q = torch.distributions.Laplace(torch.tensor(mu, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
        p = torch.distributions.Laplace(torch.tensor(mu0, dtype=torch.float64), torch.tensor(b0, dtype=torch.float64))
        z = q.sample((2_000_000,))
        diff = q.log_prob(z) - p.log_prob(z)
        se = diff.std().item() / math.sqrt(z.numel())
        closed = laplace_kl(*(torch.tensor(v, dtype=torch.float64) for v in (mu, b, mu0, b0))).item()
        assert abs(closed - diff.mean().item()) < 5 * se + 1e-9


def test_laplace_samples_have_the_stated_moments():
    fam = get_family("laplace")
    post = fam.posterior(torch.tensor([[[0.5, 0.3]]]).expand(1, 200_000, 2), {"mu": torch.zeros(1, 1), "log_scale": torch.zeros(1, 1)})
    z = fam.sample(post, torch.Generator().manual_seed(0))
    mean, var = fam.moments(post)
    assert z.mean().item() == pytest.approx(mean[0, 0, 0].item(), abs=0.02)
    assert z.var().item() == pytest.approx(var[0, 0, 0].item(), rel=0.03)


def test_shared_input_encoder_product_and_its_gradients_match_a_per_model_loop():
    # the encoder of a stack against each model's own x W[m]^T, values and gradients
    # (float64; x also takes a gradient, which the trainer never asks for)
    from poissonvae.models import _SharedInputProduct

    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 4, 7, dtype=torch.float64, generator=g, requires_grad=True)
    out = _SharedInputProduct.apply(x, w)
    assert out.shape == (3, 5, 4) and out.is_contiguous()
    loop = torch.stack([x @ w[m].T for m in range(3)])
    assert torch.allclose(out, loop)
    upstream = torch.randn(3, 5, 4, dtype=torch.float64, generator=g)
    gx, gw = torch.autograd.grad(out, [x, w], upstream)
    lx, lw = torch.autograd.grad(loop, [x, w], upstream)
    assert torch.allclose(gx, lx) and torch.allclose(gw, lw)
    assert gw.is_contiguous()  # in the parameter's own layout: no copy before the optimiser
    assert torch.autograd.gradcheck(_SharedInputProduct.apply, (x, w))
