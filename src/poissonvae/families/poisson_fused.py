"""The closed-form free energy of the P-VAE with a linear decoder, fused (eqs. 4, 8, 17, 21).

``recon = |x - Phi lambda|^2 + c . lambda`` (eqs. 17, 21; ``c = diag(Phi^T Phi)``,
mean = variance = lambda) and ``KL = sum lambda (delta - 1) + lambda0`` (eq. 8),
from the encoder output, the raw prior log-rates and ``Phi``, with a hand-derived
backward. Composed from the family's pieces (posterior, moments, KL, eq. 17),
autograd walks the ``(M, B, K)`` tensors ~30 times with four transcendentals per
element; here there is one exp and one log per element, and buffers are updated
in place.

:func:`fused_forward` and :func:`fused_backward` are plain functions: the autograd
function :class:`PoissonLinearFreeEnergy` calls them with autograd's per-sample
weights, and ``PoissonFamily.exact_gradients`` (the trainer's step) with one
weight per model and no autograd graph at all (see :mod:`.weights`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..functional import softclamp_upper
from .gram import gram_dictionary_grad, gram_forward, residual, use_gram
from .weights import Weight, add_weighted_, batch_sum, per_model, weight_total

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


def _prior_log_rate_grad(g_s_sum: Tensor, kl_total: Weight, kl_rate: Tensor, prior: Tensor,
                         log_prior_raw: Tensor) -> Tensor:
    """dF / d(raw prior log-rate): ``s = lp + u`` carries ``sum_b dF/ds``; the KL also
    holds ``lambda0`` itself, ``dKL/dlp`` at fixed ``l`` being ``lambda0 - lambda``;
    then the soft clamp's slope ``sigmoid(5 - raw)``. ``kl_total = sum_b w_k`` and
    ``kl_rate = sum_b w_k lambda`` (M, K)."""
    g_lp = g_s_sum + kl_total * prior.squeeze(-2) - kl_rate
    return g_lp * torch.sigmoid(LOG_RATE_MAX - log_prior_raw)


def _enc_and_s_grads(g_rate: Tensor, w_k: Weight, rate: Tensor, p: Tensor, rate_delta: Tensor, c: Tensor,
                     out: Tensor | None = None):
    """``dF/denc = h lambda / P`` with ``h = dF/dlambda + w_k delta`` (in place in
    ``g_rate``) and ``sum_b dF/ds = sum_b dF/denc (1 + b) = (sum_b h lambda + C sum_b
    dF/denc) / (1 + C)`` (see :func:`_rates`): two reductions of hot data instead of a product.
    ``out``: where to write ``dF/denc`` (default: over ``g_rate``)."""
    h_rate = add_weighted_(g_rate.mul_(rate), rate_delta, w_k)
    s1 = h_rate.sum(-2)
    g_enc = h_rate.div_(p) if out is None else torch.div(h_rate, p, out=out)
    c = c.squeeze(-2)
    return g_enc, (s1 + c * g_enc.sum(-2)) / (1.0 + c)


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


def _rate_grads(g_rate: Tensor, w_k: Tensor, rate: Tensor, p: Tensor, rate_delta: Tensor, c: Tensor):
    """Elementwise backward, out of place for ``torch.compile`` (see :func:`_enc_and_s_grads`);
    ``w_k`` is a tensor (a number would be compiled in as a constant)."""
    h_rate = g_rate * rate + w_k * rate_delta
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


class PoissonState(NamedTuple):
    """What :func:`fused_backward` needs from :func:`fused_forward`. ``r_or_u`` is the
    residual ``r = x - Phi lambda`` (M, B, D), or in the latent-space form (:mod:`.gram`)
    ``u = -Phi^T r`` (M, B, K); ``column_norms`` is ``c`` (M, K)."""

    x: Tensor
    r_or_u: Tensor
    column_norms: Tensor
    dictionary: Tensor
    rate: Tensor
    p: Tensor
    rate_delta: Tensor
    prior: Tensor
    c: Tensor
    log_prior_raw: Tensor
    rate_sum: Tensor | None  # sum_b lambda (M, K), when the forward formed it


def fused_forward(x: Tensor, enc: Tensor, log_prior_raw: Tensor, dictionary: Tensor,
                  compiled: bool = False, per_sample: bool = True) -> tuple[Tensor, Tensor, PoissonState]:
    """Recon and KL per sample ``(M, B)`` (``per_sample=False``: summed over the batch,
    ``(M,)``) and the state for :func:`fused_backward`. Shapes: ``x`` (B, D) shared,
    ``enc`` (M, B, K), ``log_prior_raw`` (M, K), ``Phi`` (M, D, K). ``compiled``: the
    elementwise part as a ``torch.compile``d kernel.

    The sums over the batch come from ``sum_b lambda`` (M, K), which the backward
    needs anyway: two passes over the rates fewer than the per-sample terms.

    The squared error is taken in latent space when K is well below D (:mod:`.gram`),
    else from the residual ``r``, whose product has exactly ``D`` outputs: one with
    two more columns carrying ``c . lambda`` and ``sum_k lambda`` ran ~0.1 ms slower at
    K = 512, batch 1000 on the 2-core development CPU (misaligned rows) than the
    two passes over the rates below that give them.
    """
    if compiled:
        lp = softclamp_upper(log_prior_raw, LOG_RATE_MAX).unsqueeze(-2)
        rate, p, rate_delta, rate_delta_sum = _compiled("fwd")(enc, lp)
        prior, c = torch.exp(lp), torch.exp(lp + LOG_RATE_MAX)
    else:
        rate, p, rate_delta, prior, c = _rates(enc, log_prior_raw)
        rate_delta_sum = rate_delta.sum(-1)
    if use_gram(x.shape[-1], enc.shape[-1]):
        sq_err, r_or_u, column_norms = gram_forward(x, dictionary, rate)
    else:
        r_or_u = residual(x, dictionary, rate)
        column_norms = torch.linalg.vecdot(dictionary, dictionary, dim=-2)  # (M, K)
        sq_err = torch.linalg.vecdot(r_or_u, r_or_u)
    if per_sample:
        # c . lambda: a matrix-vector product (50 us here; with sum_k lambda as a second
        # column, a two-column product took 340 us against 78 us for both apart)
        rate_sum = None
        recon = sq_err + torch.bmm(rate, column_norms.unsqueeze(-1)).squeeze(-1)
        kl = rate_delta_sum - rate.sum(-1) + prior.sum(-1)
    else:
        rate_sum = rate.sum(-2)
        recon = sq_err.sum(-1) + torch.linalg.vecdot(rate_sum, column_norms)
        kl = rate_delta_sum.sum(-1) - rate_sum.sum(-1) + rate.shape[-2] * prior.sum((-2, -1))
    state = PoissonState(x, r_or_u, column_norms, dictionary, rate, p, rate_delta, prior, c, log_prior_raw,
                         rate_sum)
    return recon, kl, state


def fused_backward(s: PoissonState, w_r: Weight, w_k: Weight, needs: tuple[bool, bool, bool, bool],
                   compiled: bool = False, enc_grad_out: Tensor | None = None) -> list[Tensor | None]:
    """Gradients of ``sum w_r recon + w_k KL`` (weights: :mod:`.weights`) with respect
    to ``(x, enc, log_prior_raw, Phi)``, those that ``needs`` asks for (``None`` for
    the others); ``dF/denc`` goes into ``enc_grad_out`` if given.

    ``dF/dlambda = w_r (c - 2 Phi^T r) + w_k delta`` (one product; in latent space
    ``w_r (c + 2 u)``, none), then through the soft clamps as in :func:`_rates`;
    ``dF/dPhi = 2 Phi diag(sum_b w_r lambda) - 2 (w_r r)^T lambda``.
    """
    need_x, need_enc, need_prior, need_dict = needs
    gram = use_gram(s.x.shape[-1], s.rate.shape[-1])
    B = s.rate.shape[-2]
    r_w, alpha = s.r_or_u, -2.0  # data space: the product gives -2 (w_r r) Phi
    if gram:
        g_rate = torch.add(s.column_norms.unsqueeze(-2), s.r_or_u, alpha=2.0).mul_(w_r)
    else:
        if isinstance(w_r, Tensor):
            r_w = s.r_or_u * w_r
        else:
            alpha = -2.0 * w_r
        g_rate = torch.baddbmm(s.column_norms.unsqueeze(-2) * w_r, r_w, s.dictionary, alpha=alpha)
    if compiled:
        g_enc, g_s_sum = _compiled("bwd")(g_rate, w_k, s.rate, s.p, s.rate_delta, s.c)
        if enc_grad_out is not None:
            g_enc = enc_grad_out.copy_(g_enc)
    else:
        g_enc, g_s_sum = _enc_and_s_grads(g_rate, w_k, s.rate, s.p, s.rate_delta, s.c, out=enc_grad_out)
    rate_sum = s.rate_sum
    if rate_sum is None and (need_prior or need_dict) and (per_model(w_r) or per_model(w_k)):
        rate_sum = s.rate.sum(-2)
    grads: list[Tensor | None] = [None, g_enc if need_enc else None, None, None]
    if need_x:  # dF/dx = sum_m 2 w_r r
        if gram:
            r_w = residual(s.x, s.dictionary, s.rate)
            r_w = r_w * w_r if isinstance(w_r, Tensor) else r_w
        grads[0] = r_w.sum(0).mul_(2.0 if isinstance(w_r, Tensor) else 2.0 * w_r)
    if need_prior:
        kl_rate = batch_sum(w_k, s.rate, rate_sum)
        grads[2] = _prior_log_rate_grad(g_s_sum, weight_total(w_k, B), kl_rate, s.prior, s.log_prior_raw)
    if need_dict:
        if gram:
            grads[3] = gram_dictionary_grad(s.x, s.dictionary, s.rate, w_r)  # variance = mean = lambda
        else:
            recon_rate = batch_sum(w_r, s.rate, rate_sum)  # sum_b w_r lambda, (M, K)
            grads[3] = torch.baddbmm(s.dictionary * (2.0 * recon_rate).unsqueeze(-2), r_w.transpose(-1, -2),
                                     s.rate, alpha=alpha)
    return grads


class PoissonLinearFreeEnergy(torch.autograd.Function):
    """:func:`fused_forward` and :func:`fused_backward` as one autograd function:
    ``(x, enc, log_prior_raw, Phi, compiled) -> (recon, KL)``, each (M, B)."""

    @staticmethod
    def forward(ctx, x: Tensor, enc: Tensor, log_prior_raw: Tensor, dictionary: Tensor, compiled: bool = False):
        recon, kl, state = fused_forward(x, enc, log_prior_raw, dictionary, compiled)
        ctx.save_for_backward(*state)
        ctx.compiled = compiled
        return recon, kl

    @staticmethod
    def backward(ctx, g_recon: Tensor, g_kl: Tensor):
        state = PoissonState(*ctx.saved_tensors)
        grads = fused_backward(state, g_recon.unsqueeze(-1), g_kl.unsqueeze(-1), ctx.needs_input_grad[:4],
                               ctx.compiled)
        return (*grads, None)


class PoissonExactTerms(torch.autograd.Function):
    """Rates and summed KL from encoder output in one pass (see :func:`_rates`), with
    a hand-derived backward: same values as ``posterior`` + ``moments`` + ``kl``
    (eqs. 4, 8). ``KL = sum lambda (delta - 1) + lambda0`` and ``dKL/dl = lambda delta``."""

    @staticmethod
    def forward(ctx, enc: Tensor, log_prior_raw: Tensor):
        rate, p, rate_delta, prior, c = _rates(enc, log_prior_raw)
        kl = rate_delta.sum(-1) - rate.sum(-1) + prior.sum(-1)
        ctx.save_for_backward(rate, p, rate_delta, prior, c, log_prior_raw)
        return rate, kl

    @staticmethod
    def backward(ctx, g_rate: Tensor, g_kl: Tensor):
        rate, p, rate_delta, prior, c, log_prior_raw = ctx.saved_tensors
        w_k = g_kl.unsqueeze(-1)
        g_enc, g_s_sum = _enc_and_s_grads(g_rate.clone(), w_k, rate, p, rate_delta, c)
        kl_rate = batch_sum(w_k, rate)
        return g_enc, _prior_log_rate_grad(g_s_sum, weight_total(w_k, rate.shape[-2]), kl_rate, prior,
                                           log_prior_raw)
