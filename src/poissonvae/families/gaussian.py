"""Gaussian latents: the plain G-VAE and the rectified G_relu-VAE (eqs. 5, 9, 15, 18-19)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional import gaussian_kl, relu_moments
from .base import ExactGradients, LatentFamily, Posterior
from .rectified import RectifiedLinearFreeEnergy, fused_backward, fused_forward

# Ref. code guard on the log-scale: 5.3 tanh(x / 5.3) keeps sigma in
# (e^-5.3, e^5.3) with a smooth, non-saturating gradient near 0.
LOG_SCALE_BOUND = 5.3


def guard_log_scale(log_scale: Tensor, upper: float = LOG_SCALE_BOUND) -> Tensor:
    """The ref-code guard ``c tanh(x / c)`` with ``c = 5.3``, elementwise; with
    ``upper < 5.3`` the positive side saturates at ``upper`` instead
    (``upper tanh(x / upper)`` for ``x > 0``). Both branches have slope 1 at 0,
    so near the prior (``x = 0``) the guard is the identity to third order."""
    lower_branch = LOG_SCALE_BOUND * torch.tanh(log_scale / LOG_SCALE_BOUND)
    if upper == LOG_SCALE_BOUND:
        return lower_branch
    if not 0 < upper < LOG_SCALE_BOUND:
        raise ValueError(f"upper log-scale bound must be in (0, {LOG_SCALE_BOUND}], got {upper}")
    return torch.where(log_scale > 0, upper * torch.tanh(log_scale / upper), lower_branch)


def residual_location_scale(
    enc: Tensor, prior_loc: Tensor, prior_log_scale: Tensor, log_scale_max: float = LOG_SCALE_BOUND
) -> tuple[Tensor, ...]:
    """Eq. (5) for any location-scale family: encoder output ``(delta_mu, delta_v)``
    (``K`` each) on the prior ``(loc0, log scale0)`` ``(M, K)``; the log-scales
    pass the ref-code guard (:func:`guard_log_scale`, whose upper bound
    ``log_scale_max`` a family may tighten). Returns ``loc, scale, loc0, scale0``
    (``(M, B, K)`` and ``(M, 1, K)``)."""
    if enc.shape[-1] != 2 * prior_loc.shape[-1]:
        raise ValueError(
            f"encoder output has {enc.shape[-1]} values per sample; a location-scale family with "
            f"K = {prior_loc.shape[-1]} needs 2 * K (delta_mu, delta_v)"
        )
    delta_mu, delta_v = enc.chunk(2, dim=-1)
    loc0 = prior_loc.unsqueeze(-2)
    log_s0 = guard_log_scale(prior_log_scale, log_scale_max).unsqueeze(-2)
    log_s = guard_log_scale(log_s0 + delta_v, log_scale_max)
    return loc0 + delta_mu, torch.exp(log_s), loc0, torch.exp(log_s0)


class GaussianFamily(LatentFamily):
    """``q = N(mu0 + delta_mu, (sigma0 exp(delta_v))^2)``, ``p = N(mu0, sigma0^2)``; ``h = z``.

    Encoder output holds ``delta_mu`` (first ``K``) and ``delta_v`` (last ``K``),
    the log-scale residual. The prior starts at N(0, 1); the plain G-VAE keeps it
    fixed there (P-VAE paper), unless the config asks to learn it.
    """

    name = "gaussian"
    n_params = 2
    learn_prior_default = False

    def init_prior(self, n_models: int, K: int, generator: torch.Generator) -> dict[str, Tensor]:
        return {"mu": torch.zeros(n_models, K), "log_sigma": torch.zeros(n_models, K)}

    def posterior(self, enc: Tensor, prior: dict[str, Tensor]) -> Posterior:
        mu, sigma, mu0, sigma0 = residual_location_scale(enc, prior["mu"], prior["log_sigma"])  # eq. (5)
        return {"mu": mu, "sigma": sigma, "prior_mu": mu0, "prior_sigma": sigma0}

    def kl(self, post: Posterior) -> Tensor:
        return gaussian_kl(post["mu"], post["sigma"], post["prior_mu"], post["prior_sigma"])  # eq. (9)

    def moments(self, post: Posterior) -> tuple[Tensor, Tensor]:
        return post["mu"], post["sigma"] ** 2

    def _z(self, post: Posterior, generator: torch.Generator | None) -> Tensor:
        eps = torch.randn(post["mu"].shape, generator=generator, dtype=post["mu"].dtype, device=post["mu"].device)
        return post["mu"] + post["sigma"] * eps

    def rsample(self, post, temperature, hard=False, generator=None) -> Tensor:
        return self._z(post, generator)

    def sample(self, post, generator=None) -> Tensor:
        with torch.no_grad():
            return self._z(post, generator)


class GaussianReluFamily(GaussianFamily):
    """The rectified control: Gaussian posterior and prior, decoder input ``h = relu(z)`` (eq. 15).

    The prior is learned, initialised at N(0, 1) (metabolic-cost appendix).
    """

    name = "gaussian_relu"
    learn_prior_default = True

    def moments(self, post: Posterior) -> tuple[Tensor, Tensor]:
        return relu_moments(post["mu"], post["sigma"])  # eqs. (18)-(19)

    def exact_objective(self, x: Tensor, enc: Tensor, prior: dict[str, Tensor], dictionary: Tensor):
        # the same values as the composition, in one fused function (families/rectified.py)
        return RectifiedLinearFreeEnergy.apply(x, enc, prior["mu"], prior["log_sigma"], dictionary)

    def exact_gradients(self, x: Tensor, enc: Tensor, prior: dict[str, Tensor], dictionary: Tensor,
                        recon_weight: float, kl_weight: Tensor,
                        enc_grad_out: Tensor | None = None) -> ExactGradients:
        # the fused function's two halves called directly, one weight per model, no autograd graph
        mu, log_sigma = prior["mu"], prior["log_sigma"]
        with torch.no_grad():
            recon, kl, state = fused_forward(x, enc, mu, log_sigma, dictionary, per_sample=False)
            needs = (False, True, mu.requires_grad, log_sigma.requires_grad, dictionary.requires_grad)
            grads = fused_backward(state, float(recon_weight), kl_weight.view(-1, 1, 1), needs, enc_grad_out)
        learned = {name: g for name, g, need in (("mu", grads[2], needs[2]), ("log_sigma", grads[3], needs[3]))
                   if need}
        return ExactGradients(recon, kl, grads[1], grads[4], learned)

    def rsample(self, post, temperature, hard=False, generator=None) -> Tensor:
        return torch.relu(self._z(post, generator))

    def sample(self, post, generator=None) -> Tensor:
        with torch.no_grad():
            return torch.relu(self._z(post, generator))
