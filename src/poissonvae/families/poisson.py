"""Poisson latents: the P-VAE (eqs. 4, 6-8; P-VAE Algorithm 1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..functional import poisson_kl_from_log, poisson_rsample, softclamp_upper
from .base import LatentFamily, Posterior
from .gram import gram_dictionary_grad, gram_forward, residual, use_gram

# Ref. code guards: the log-residual is soft-clamped at 10, the log-rate at 5
# (rates above e^5 ~ 148 spikes per inference step are never useful and make
# the exponential-arrival sampler expensive).
LOG_RESIDUAL_MAX = 10.0
LOG_RATE_MAX = 5.0


_E5 = math.exp(LOG_RATE_MAX)


_E_MINUS_10 = math.exp(-LOG_RESIDUAL_MAX)
# beyond this the residual clamp is LOG_RESIDUAL_MAX to float precision; exp(80) still fits float32
_ENC_CAP = 80.0


def _rates(enc: Tensor, log_prior_raw: Tensor):
    """Rates, log-residuals and what their gradients need, from encoder output
    (eqs. 4, 8 with the ref. code's soft clamps), in one exp and one log per element.

    With ``sc_c(x) = x - log1p(e^(x - c))``, ``u = sc_10(enc)``, ``s = lp + u``,
    ``l = sc_5(s)``, ``lambda = e^l``, ``delta = l - lp``: write ``b = e^(enc - 10)``,
    ``a = e^(s - 5)`` and ``C = e^(lp + 5)`` (per unit). Then ``e^u = e^enc / (1 + b)``
    gives ``a (1 + b) = b C``, so ``P := (1 + a)(1 + b) = 1 + b (1 + C)``,
    ``lambda = e^5 a / (1 + a) = e^5 C b / P`` and ``delta = enc - log P``.
    The clamps' slopes are ``1 / (1 + a)`` and ``1 / (1 + b)``, so
    ``d lambda / d enc = lambda / P`` and ``1 + b = (P + C) / (1 + C)``. ``enc`` is
    capped at 80 first: beyond it ``sc_10`` is 10 to float precision and ``e^enc``
    would overflow.

    Returns ``rate``, ``P``, ``lambda delta`` (all ``(M, B, K)``), the prior rates
    ``lambda0`` and ``C`` (``(M, 1, K)``). Fresh buffers are updated in place: on a
    CPU an out-of-place op into cold memory costs ~3 in-place ones.
    """
    lp = softclamp_upper(log_prior_raw, LOG_RATE_MAX).unsqueeze(-2)  # (M, 1, K), small
    c = torch.exp(lp + LOG_RATE_MAX)
    e = enc.clamp(max=_ENC_CAP)
    rate = torch.exp(e)  # e^enc = b e^10, becomes the rate below
    p = torch.addcmul(torch.ones((), dtype=rate.dtype, device=rate.device), rate, (1.0 + c) * _E_MINUS_10)
    rate.mul_(c * (_E5 * _E_MINUS_10)).div_(p)
    rate_delta = e.sub_(torch.log(p)).mul_(rate)  # e (a fresh tensor) becomes lambda delta
    return rate, p, rate_delta, torch.exp(lp), c


def _prior_log_rate_grad(g_s_sum: Tensor, g_kl: Tensor, rate: Tensor, prior: Tensor, log_prior_raw: Tensor,
                         kl_rate: Tensor | None = None) -> Tensor:
    """dF / d(raw prior log-rate): ``s = lp + u`` carries ``sum_b dF/ds``; the KL also
    holds ``lambda0`` itself, ``dKL/dlp`` at fixed ``l`` being ``lambda0 - lambda``;
    then the soft clamp's slope ``sigmoid(5 - raw)``. ``kl_rate`` (``sum_b g_kl lambda``,
    (M, K)) may come precomputed."""
    if kl_rate is None:
        kl_rate = (g_kl.unsqueeze(-2) @ rate).squeeze(-2)
    g_lp = g_s_sum + g_kl.sum(-1, keepdim=True) * prior.squeeze(-2) - kl_rate
    return g_lp * torch.sigmoid(LOG_RATE_MAX - log_prior_raw)


def _enc_and_s_grads(g_rate: Tensor, g_kl: Tensor, rate: Tensor, p: Tensor, rate_delta: Tensor, c: Tensor,
                     out: Tensor | None = None):
    """``dF/denc = h lambda / P`` with ``h = dF/dlambda + g_kl delta`` (in place in
    ``g_rate``) and ``sum_b dF/ds = sum_b dF/denc (1 + b) = (sum_b h lambda + C sum_b
    dF/denc) / (1 + C)`` (see :func:`_rates`): two reductions of hot data instead of a product.
    ``out``: where to write ``dF/denc`` (default: over ``g_rate``)."""
    h_rate = g_rate.mul_(rate).addcmul_(g_kl.unsqueeze(-1), rate_delta)
    s1 = h_rate.sum(-2)
    g_enc = h_rate.div_(p) if out is None else torch.div(h_rate, p, out=out)
    c = c.squeeze(-2)
    return g_enc, (s1 + c * g_enc.sum(-2)) / (1.0 + c)


class _PoissonExactTerms(torch.autograd.Function):
    """Rates and summed KL from encoder output in one pass (see :func:`_rates`), with
    a hand-derived backward: same values as ``posterior`` + ``moments`` + ``kl``
    (eqs. 4, 8), whose autograd graph walks memory ~30 times with four
    transcendentals per element. ``KL = sum lambda (delta - 1) + lambda0`` and
    ``dKL/dl = lambda delta``."""

    @staticmethod
    def forward(ctx, enc: Tensor, log_prior_raw: Tensor):
        rate, p, rate_delta, prior, c = _rates(enc, log_prior_raw)
        kl = rate_delta.sum(-1) - rate.sum(-1) + prior.sum(-1)
        ctx.save_for_backward(rate, p, rate_delta, prior, c, log_prior_raw)
        return rate, kl

    @staticmethod
    def backward(ctx, g_rate: Tensor, g_kl: Tensor):
        rate, p, rate_delta, prior, c, log_prior_raw = ctx.saved_tensors
        g_enc, g_s_sum = _enc_and_s_grads(g_rate.clone(), g_kl, rate, p, rate_delta, c)
        return g_enc, _prior_log_rate_grad(g_s_sum, g_kl, rate, prior, log_prior_raw)


def _rate_terms(enc: Tensor, lp: Tensor):
    """Elementwise forward of the fused objective (the algebra of :func:`_rates`),
    written out of place so that ``torch.compile`` can turn it into one loop: rates,
    ``P``, ``lambda delta`` and its sum over units (M, B), from the encoder output and
    the clamped prior log-rate ``lp`` (M, 1, K)."""
    c = torch.exp(lp + LOG_RATE_MAX)
    e = enc.clamp(max=_ENC_CAP)
    eb = torch.exp(e)
    p = 1.0 + eb * ((1.0 + c) * _E_MINUS_10)
    rate = eb * (c * (_E5 * _E_MINUS_10)) / p
    rate_delta = (e - torch.log(p)) * rate
    return rate, p, rate_delta, rate_delta.sum(-1)


def _rate_grads(g_rate: Tensor, g_kl: Tensor, rate: Tensor, p: Tensor, rate_delta: Tensor, c: Tensor):
    """Elementwise backward, out of place for ``torch.compile`` (see :func:`_enc_and_s_grads`)."""
    h_rate = g_rate * rate + g_kl.unsqueeze(-1) * rate_delta
    g_enc = h_rate / p
    c = c.squeeze(-2)
    return g_enc, (h_rate.sum(-2) + c * g_enc.sum(-2)) / (1.0 + c)


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
    ``(M, B, K)`` tensors, not by its products. So every reduction that a product
    can carry rides along in one: the decoder product runs on ``[Phi; c; 1]``,
    giving ``c . lambda`` and ``sum_k lambda`` as two extra output columns;
    backward, ``dF/dlambda = g_r (c - 2 Phi^T r) + g_kl delta`` comes from
    ``[-2 g_r r, g_r] [Phi; c]`` plus one multiply-add, and the dictionary-gradient
    product on ``[-2 g_r r, g_r, g_kl]`` also yields ``sum_b g_r lambda`` (for
    ``dF/dPhi = 2 Phi diag(sum_b g_r lambda) - 2 (g_r r)^T lambda``) and
    ``sum_b g_kl lambda`` (for the prior). Then ``dF/denc`` through the soft clamps
    as in :func:`_rates`. Shapes: ``x`` (B, D) shared, ``enc`` (M, B, K),
    ``log_prior_raw`` (M, K), ``Phi`` (M, D, K); returns recon and KL, (M, B).
    ``compiled``: run the elementwise parts as ``torch.compile``d kernels.

    For K well below D the squared error is taken in latent space instead
    (:mod:`.gram`): ``dF/dlambda = g_r (c + 2 u)`` with ``u = -Phi^T r``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, enc: Tensor, log_prior_raw: Tensor, dictionary: Tensor, compiled: bool = False,
                enc_grad_out: Tensor | None = None):
        M, B, D = enc.shape[0], x.shape[0], x.shape[1]
        if compiled:
            lp = softclamp_upper(log_prior_raw, LOG_RATE_MAX).unsqueeze(-2)
            rate, p, rate_delta, rate_delta_sum = _compiled("fwd")(enc, lp)
            prior, c = torch.exp(lp), torch.exp(lp + LOG_RATE_MAX)
        else:
            rate, p, rate_delta, prior, c = _rates(enc, log_prior_raw)
            rate_delta_sum = rate_delta.sum(-1)
        ctx.compiled = compiled
        ctx.enc_grad_out = enc_grad_out
        ctx.gram = use_gram(D, enc.shape[-1])
        if ctx.gram:
            sq_err, u, column_norms = gram_forward(x, dictionary, rate)
            recon = sq_err + torch.bmm(rate, column_norms.unsqueeze(-1)).squeeze(-1)
            kl = rate_delta_sum - rate.sum(-1) + prior.sum(-1)
            ctx.save_for_backward(x, u, column_norms, dictionary, rate, p, rate_delta, prior, c, log_prior_raw)
            return recon, kl
        column_norms = (dictionary * dictionary).sum(-2, keepdim=True)  # (M, 1, K)
        extended = torch.cat([dictionary, column_norms, torch.ones_like(column_norms)], -2)  # (M, D + 2, K)
        x_ext = torch.cat([x, x.new_zeros(B, 2)], -1).expand(M, B, D + 2)
        out = torch.baddbmm(x_ext, rate, extended.transpose(-1, -2), alpha=-1.0)  # [r, -c.lambda, -sum lambda]
        residual = out[..., :D]
        recon = torch.linalg.vecdot(residual, residual) - out[..., D]
        kl = rate_delta_sum + out[..., D + 1] + prior.sum(-1)
        ctx.save_for_backward(out, extended, rate, p, rate_delta, prior, c, log_prior_raw)
        return recon, kl

    @staticmethod
    def _enc_grads(ctx, g_rate: Tensor, g_kl: Tensor, rate: Tensor, p: Tensor, rate_delta: Tensor, c: Tensor):
        if ctx.compiled:
            g_enc, g_s_sum = _compiled("bwd")(g_rate, g_kl, rate, p, rate_delta, c)
        else:
            g_enc, g_s_sum = _enc_and_s_grads(g_rate, g_kl, rate, p, rate_delta, c, out=ctx.enc_grad_out)
        if ctx.enc_grad_out is not None:  # the caller's buffer (see LatentFamily.exact_objective)
            if g_enc is not ctx.enc_grad_out:
                g_enc = ctx.enc_grad_out.copy_(g_enc)
            ctx.enc_grad_out = None  # hand the only reference to autograd
        return g_enc, g_s_sum

    @staticmethod
    def _gram_backward(ctx, g_recon: Tensor, g_kl: Tensor):
        x, u, column_norms, dictionary, rate, p, rate_delta, prior, c, log_prior_raw = ctx.saved_tensors
        need_x, need_enc, need_prior, need_dict = ctx.needs_input_grad[:4]
        g_r = g_recon.unsqueeze(-1)
        g_rate = torch.add(column_norms.unsqueeze(-2), u, alpha=2.0).mul_(g_r)  # g_r (c + 2 u)
        g_enc, g_s_sum = _PoissonLinearFreeEnergy._enc_grads(ctx, g_rate, g_kl, rate, p, rate_delta, c)
        grads = [None, g_enc if need_enc else None, None, None, None, None]
        if need_x:
            grads[0] = (residual(x, dictionary, rate) * (2.0 * g_r)).sum(0)
        if need_prior:
            grads[2] = _prior_log_rate_grad(g_s_sum, g_kl, rate, prior, log_prior_raw)
        if need_dict:
            grads[3] = gram_dictionary_grad(x, dictionary, rate, g_recon)  # variance = mean = lambda
        return tuple(grads)

    @staticmethod
    def backward(ctx, g_recon: Tensor, g_kl: Tensor):
        if ctx.gram:
            return _PoissonLinearFreeEnergy._gram_backward(ctx, g_recon, g_kl)
        out, extended, rate, p, rate_delta, prior, c, log_prior_raw = ctx.saved_tensors
        need_x, need_enc, need_prior, need_dict = ctx.needs_input_grad[:4]
        D = out.shape[2] - 2
        g_r = g_recon.unsqueeze(-1)  # (M, B, 1)
        g_ext = torch.empty_like(out)  # [-2 g_r r, g_r, g_kl]
        torch.mul(out[..., :D], -2.0 * g_r, out=g_ext[..., :D])
        g_ext[..., D] = g_recon
        g_ext[..., D + 1] = g_kl
        g_rate = torch.bmm(g_ext[..., : D + 1], extended[:, : D + 1])  # g_r c - 2 g_r Phi^T r, (M, B, K)
        g_enc, g_s_sum = _PoissonLinearFreeEnergy._enc_grads(ctx, g_rate, g_kl, rate, p, rate_delta, c)
        grads = [None, None, None, None, None, None]
        if need_x:
            grads[0] = g_ext[..., :D].sum(0).neg_()
        if need_prior or need_dict:
            sums = torch.bmm(g_ext.transpose(-1, -2), rate)  # (M, D + 2, K)
            if need_dict:  # 2 Phi diag(sum_b g_r lambda) - 2 (g_r r)^T lambda
                grads[3] = torch.addcmul(sums[:, :D], extended[:, :D], sums[:, D : D + 1], value=2.0)
            if need_prior:
                grads[2] = _prior_log_rate_grad(g_s_sum, g_kl, rate, prior, log_prior_raw, kl_rate=sums[:, D + 1])
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

    def exact_objective(self, x: Tensor, enc: Tensor, prior: dict[str, Tensor], dictionary: Tensor,
                        enc_grad_out: Tensor | None = None):
        return _PoissonLinearFreeEnergy.apply(x, enc, prior["log_rate"], dictionary, self.compiled, enc_grad_out)

    def compile_kernels(self, enabled: bool = True) -> bool:
        """Run the exact objective's elementwise passes as ``torch.compile``d kernels
        (two fused loops instead of ~25 passes; needs a working compiler backend,
        and compiles once per process, ~10-20 s)."""
        self.compiled = bool(enabled)
        return self.compiled

    def max_rate(self, post: Posterior) -> Tensor:
        return torch.exp(post["log_rate"].detach().max())
