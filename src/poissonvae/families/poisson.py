"""Poisson latents: the P-VAE (eqs. 4, 6-8; P-VAE Algorithm 1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..functional import poisson_kl_from_log, poisson_rsample, softclamp_upper
from .base import LatentFamily, Posterior

# Ref. code guards: the log-residual is soft-clamped at 10, the log-rate at 5
# (rates above e^5 ~ 148 spikes per inference step are never useful and make
# the exponential-arrival sampler expensive).
LOG_RESIDUAL_MAX = 10.0
LOG_RATE_MAX = 5.0


_E5 = math.exp(LOG_RATE_MAX)


class _PoissonExactTerms(torch.autograd.Function):
    """Rates and summed KL from encoder output in one pass, with a hand-derived backward.

    Same values as ``posterior`` + ``moments`` + ``kl`` (eqs. 4, 8), but the
    autograd graph of that composition walks memory ~30 times and evaluates
    four transcendentals per element, and the exact objective's step is
    bound by those elementwise passes, not by its matrix products.

    With the soft clamp ``sc_c(x) = x - log1p(e^(x - c))``,
    ``u = sc_10(enc)``, ``s = lp + u``, ``l = sc_5(s)``, write
    ``b = e^(enc - 10)``; then ``e^u = e^enc / (1 + b)`` gives
    ``a := e^(s - 5) = b e^(lp + 5) / (1 + b)``,
    ``lambda = e^l = e^5 a / (1 + a)`` and
    ``delta = l - lp = enc - log((1 + a)(1 + b))``: one exp and one log per
    element. ``KL = lambda0 f(lambda / lambda0) = lambda (delta - 1) + lambda0``;
    ``dKL/dl = lambda delta``, ``dKL/dlp|_l = lambda0 - lambda``, and the
    clamps' derivatives ``sigmoid(c - x)`` are ``1 / (1 + a)`` and ``1 / (1 + b)``.
    ``enc`` is capped at 80 first: beyond it ``sc_10`` is 10 to float precision
    and ``e^(enc - 10)`` would overflow.
    """

    @staticmethod
    def forward(ctx, enc: Tensor, log_prior_raw: Tensor):
        rate, delta, prior, one_a, one_b = _rates(enc, log_prior_raw)
        kl = (rate * (delta - 1.0)).sum(-1) + prior.sum(-1)
        ctx.save_for_backward(one_b, one_a, rate, delta, log_prior_raw, prior)
        return rate, kl

    @staticmethod
    def backward(ctx, g_rate: Tensor, g_kl: Tensor):
        one_b, one_a, rate, delta, log_prior_raw, prior = ctx.saved_tensors
        g_kl = g_kl.unsqueeze(-1)
        g_s = (g_rate + g_kl * delta).mul_(rate).div_(one_a)  # through l = sc_5(s), lambda = e^l, KL
        g_enc = g_s / one_b  # through sc_10 (zero beyond the cap, as the clamp's slope is)
        g_lp = (g_s + g_kl * (prior - rate)).sum(-2)
        g_prior_raw = g_lp * torch.sigmoid(LOG_RATE_MAX - log_prior_raw)
        return g_enc, g_prior_raw


def _rates(enc: Tensor, log_prior_raw: Tensor):
    """Forward half of :class:`_PoissonExactTerms` (see its docstring for the algebra):
    rates, log-residual ``delta``, prior rates, and ``1 + a``, ``1 + b``."""
    lp = softclamp_upper(log_prior_raw, LOG_RATE_MAX).unsqueeze(-2)  # (M, 1, K), small
    e = enc.clamp(max=80.0)
    b = torch.exp(e - LOG_RESIDUAL_MAX)
    one_b = b.add(1.0)
    a = b.mul_(torch.exp(lp + LOG_RATE_MAX)).div_(one_b)  # b is consumed
    one_a = a.add(1.0)
    rate = a.mul_(_E5).div_(one_a)  # e^5 a / (1 + a), with a's full precision when a << 1
    delta = e.sub_(torch.log(one_a * one_b))  # e (a fresh tensor) is consumed
    return rate, delta, torch.exp(lp), one_a, one_b


def _rate_terms(enc: Tensor, lp: Tensor):
    """Elementwise forward of the fused objective, written out of place so that
    ``torch.compile`` can turn it into one loop: rates, ``d lambda / d s``,
    ``delta``, ``1 + b`` and ``sum_k lambda (delta - 1)`` (M, B), from the
    encoder output and the clamped prior log-rate ``lp`` (M, 1, K)."""
    e = enc.clamp(max=80.0)
    b = torch.exp(e - LOG_RESIDUAL_MAX)
    one_b = b + 1.0
    a = b * torch.exp(lp + LOG_RATE_MAX) / one_b
    one_a = a + 1.0
    rate = a * _E5 / one_a
    delta = e - torch.log(one_a * one_b)
    return rate, rate / one_a, delta, one_b, (rate * (delta - 1.0)).sum(-1)


def _rate_grads(g_rate: Tensor, g_kl: Tensor, delta: Tensor, slope: Tensor, one_b: Tensor):
    """Elementwise backward: ``dF/ds = (dF/dlambda + g_kl delta) dlambda/ds``, summed
    over the batch (for the prior), and ``dF/denc = dF/ds / (1 + b)`` (through sc_10)."""
    g_s = (g_rate + g_kl.unsqueeze(-1) * delta) * slope
    return g_s / one_b, g_s.sum(-2)


_COMPILED: dict[str, object] = {}


def _compiled(name: str):
    """``torch.compile`` of a kernel above, made once per process (opt-in: see
    ``PoissonFamily.compile_kernels``)."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile({"fwd": _rate_terms, "bwd": _rate_grads}[name])
    return _COMPILED[name]


class _PoissonLinearFreeEnergy(torch.autograd.Function):
    """The whole closed-form P-VAE objective of a linear decoder in one function:
    ``recon = |x - Phi lambda|^2 + c . lambda`` (eqs. 17, 21; ``c = diag(Phi^T Phi)``,
    mean = variance = lambda) and ``KL = sum lambda (delta - 1) + lambda0`` (eq. 8).

    Why: the exact objective's step is bound by elementwise passes over the
    ``(M, B, K)`` tensors, not by its products. Composed from the rates function
    and the reconstruction function, autograd adds the two gradients of lambda
    (as mean and as variance) and the KL's in separate passes; here
    ``dF/dlambda = g_r (c - 2 Phi^T r) + g_kl delta`` is formed inside one batched
    product (``baddbmm``) plus one multiply-add, then mapped through the soft
    clamps as in :class:`_PoissonExactTerms`. ``dF/dPhi = 2 Phi diag(g_r^T lambda)
    - 2 (g_r r)^T lambda``. Shapes: ``x`` (B, D) shared, ``enc`` (M, B, K),
    ``log_prior_raw`` (M, K), ``Phi`` (M, D, K); returns recon and KL, (M, B).
    ``compiled``: run the elementwise parts as ``torch.compile``d kernels.
    """

    @staticmethod
    def forward(ctx, x: Tensor, enc: Tensor, log_prior_raw: Tensor, dictionary: Tensor, compiled: bool = False):
        if compiled:
            lp = softclamp_upper(log_prior_raw, LOG_RATE_MAX).unsqueeze(-2)
            rate, slope, delta, one_b, kl_terms = _compiled("fwd")(enc, lp)
            prior = torch.exp(lp)
        else:
            rate, delta, prior, one_a, one_b = _rates(enc, log_prior_raw)
            slope = rate / one_a  # d lambda / d s = lambda / (1 + a)
            kl_terms = None
        residual = torch.baddbmm(x.expand(rate.shape[0], *x.shape), rate, dictionary.transpose(-1, -2), alpha=-1.0)
        column_norms = (dictionary * dictionary).sum(-2)  # (M, K)
        # one read of lambda for both the variance term c . lambda and sum(lambda)
        both = rate @ torch.stack([column_norms, torch.ones_like(column_norms)], -1)  # (M, B, 2)
        recon = torch.linalg.vecdot(residual, residual) + both[..., 0]
        if kl_terms is None:
            kl_terms = torch.linalg.vecdot(rate, delta) - both[..., 1]
        kl = kl_terms + prior.sum(-1)
        ctx.compiled = compiled
        ctx.save_for_backward(residual, dictionary, column_norms, rate, slope, one_b, delta, prior, log_prior_raw)
        return recon, kl

    @staticmethod
    def backward(ctx, g_recon: Tensor, g_kl: Tensor):
        residual, dictionary, column_norms, rate, slope, one_b, delta, prior, log_prior_raw = ctx.saved_tensors
        need_x, need_enc, need_prior, need_dict = ctx.needs_input_grad[:4]
        g_r = g_recon.unsqueeze(-1)  # (M, B, 1)
        gr = residual * (2.0 * g_r)  # dF/dx_hat, (M, B, D)
        g_rate = torch.baddbmm(g_r * column_norms.unsqueeze(-2), gr, dictionary, alpha=-1.0)  # (M, B, K)
        if ctx.compiled:
            g_enc, g_s_sum = _compiled("bwd")(g_rate, g_kl, delta, slope, one_b)
        else:
            g_s = g_rate.addcmul_(g_kl.unsqueeze(-1), delta).mul_(slope)  # through lambda = e^(sc_5(s))
            g_s_sum = g_s.sum(-2) if need_prior else None
            g_enc = g_s.div_(one_b)  # through sc_10 (zero beyond the cap)
        grads = [None, None, None, None, None]
        if need_x:
            grads[0] = gr.sum(0)
        if need_prior:
            # s = lp + u carries g_s; the KL also holds lambda0 itself: dKL/dlp at fixed l = lambda0 - lambda
            kl_rate = (g_kl.unsqueeze(-2) @ rate).squeeze(-2)  # sum_b g_kl lambda, (M, K)
            g_lp = g_s_sum + g_kl.sum(-1, keepdim=True) * prior.squeeze(-2) - kl_rate
            grads[2] = g_lp * torch.sigmoid(LOG_RATE_MAX - log_prior_raw)
        if need_dict:
            weighted = g_r.transpose(-1, -2) @ rate  # (M, 1, K): sum_b g_r lambda
            grads[3] = torch.baddbmm(2.0 * dictionary * weighted, gr.transpose(-1, -2), rate, alpha=-1.0)
        if need_enc:
            grads[1] = g_enc
        return tuple(grads)


class PoissonFamily(LatentFamily):
    """``q = Pois(lambda0 * exp(u))``, ``p = Pois(lambda0)``; ``h = z``.

    Args:
        indicator: soft indicator of the relaxed sampler, ``"cubic"`` or ``"sigmoid"``.
        n_exp: fixed number of arrival times, or ``None`` to derive it from the
            largest rate (the trainer sets it once per epoch).
        prior_init: range of the uniform initial ``log lambda0``: log-uniform
            (Jeffreys) prior rates; ref. code uses (-6, -4) for linear decoders.
    """

    name = "poisson"
    n_params = 1
    uses_temperature = True

    def __init__(
        self,
        indicator: str = "cubic",
        n_exp: int | None = None,
        prior_init: tuple[float, float] = (-6.0, -4.0),
    ) -> None:
        if indicator not in ("cubic", "sigmoid"):
            raise ValueError(f"unknown indicator {indicator!r}; expected 'cubic' or 'sigmoid'")
        self.indicator = indicator
        self.n_exp = n_exp
        self.compiled = False
        self.prior_init = prior_init

    def init_prior(self, n_models: int, K: int, generator: torch.Generator) -> dict[str, Tensor]:
        low, high = self.prior_init
        log_rate = torch.rand(n_models, K, generator=generator) * (high - low) + low
        return {"log_rate": log_rate}

    def posterior(self, enc: Tensor, prior: dict[str, Tensor]) -> Posterior:
        log_prior = softclamp_upper(prior["log_rate"], LOG_RATE_MAX).unsqueeze(-2)  # (M,1,K)
        u = softclamp_upper(enc, LOG_RESIDUAL_MAX)  # eq. (4) in log space
        log_rate = softclamp_upper(log_prior + u, LOG_RATE_MAX)
        return {"log_rate": log_rate, "log_prior_rate": log_prior}

    def kl(self, post: Posterior) -> Tensor:
        # eq. (8): lambda0 f(delta lambda), evaluated via the log-residual
        return poisson_kl_from_log(post["log_rate"], post["log_prior_rate"]).expand_as(post["log_rate"])

    def moments(self, post: Posterior) -> tuple[Tensor, Tensor]:
        rate = torch.exp(post["log_rate"])
        return rate, rate  # Poisson: mean = variance = lambda (eq. 21)

    def rsample(self, post, temperature, hard=False, generator=None) -> Tensor:
        rate = torch.exp(post["log_rate"])
        return poisson_rsample(
            rate, temperature, self.indicator, n_exp=self.n_exp, hard=hard, generator=generator
        )

    def sample(self, post, generator=None) -> Tensor:
        with torch.no_grad():
            return torch.poisson(torch.exp(post["log_rate"]), generator=generator)

    def exact_terms(self, enc: Tensor, prior: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        rate, kl = _PoissonExactTerms.apply(enc, prior["log_rate"])
        return rate, rate, kl  # Poisson: mean = variance = lambda

    def exact_objective(self, x: Tensor, enc: Tensor, prior: dict[str, Tensor], dictionary: Tensor):
        return _PoissonLinearFreeEnergy.apply(x, enc, prior["log_rate"], dictionary, self.compiled)

    def compile_kernels(self, enabled: bool = True) -> bool:
        """Run the exact objective's elementwise passes as ``torch.compile``d kernels
        (two fused loops instead of ~25 passes; needs a working compiler backend,
        and compiles once per process, ~10-20 s)."""
        self.compiled = bool(enabled)
        return self.compiled

    def max_rate(self, post: Posterior) -> Tensor:
        return torch.exp(post["log_rate"].detach().max())
