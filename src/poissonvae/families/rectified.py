"""The closed-form free energy of the G_relu-VAE with a linear decoder, fused into one
autograd function (eqs. 5, 9, 17-19, 21).

Composed from the family's pieces (posterior, relu moments, eq. 17, KL), autograd
walks the ``(M, B, K)`` tensors ~60 times per step and allocates most of them
fresh; :func:`fused_forward` and :func:`fused_backward` compute the same values with
a hand-derived backward in about a third of the passes, updating buffers in place
where it can. The autograd function :class:`RectifiedLinearFreeEnergy` calls them
with autograd's per-sample weights, ``GaussianReluFamily.exact_gradients`` (the
trainer's step) with one weight per model and no graph (see :mod:`.weights`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional import relu_moment_terms
from .gram import gram_dictionary_grad, gram_forward, residual, use_gram
from .weights import Weight, add_weighted_, batch_sum, weight_total

# the ref. code's log-scale guard c tanh(x / c) (see gaussian.guard_log_scale)
_C = 5.3


def fused_forward(x: Tensor, enc: Tensor, prior_mu: Tensor, prior_log_sigma: Tensor, dictionary: Tensor,
                  per_sample: bool = True) -> tuple[Tensor, Tensor, tuple[Tensor | None, ...]]:
    """``recon = |x - Phi m|^2 + c . v`` (eq. 17, ``c = diag(Phi^T Phi)``, ``m, v`` the
    moments of ``relu(z)``, eqs. 18-19) and ``KL = 1/2 sum [w0 (dmu^2 + sigma^2) - 1
    - 2 (ls - ls0)]`` (eq. 9, ``w0 = sigma0^-2``), with ``mu = mu0 + dmu`` and
    ``ls = c tanh((ls0 + dv) / c)``, ``ls0 = c tanh(raw / c)`` (eq. 5 and the guard);
    each ``(M, B)`` (``per_sample=False``: summed over the batch, ``(M,)``, from the
    sums over the batch that the backward needs anyway), and the state
    :func:`fused_backward` needs.

    Shapes: ``x`` (B, D) shared, ``enc`` (M, B, 2K) holding ``(dmu, dv)``, the prior's
    ``mu0`` and raw log-scale (M, K), ``Phi`` (M, D, K).

    For K well below D the squared error is taken in latent space (:mod:`.gram`):
    the state holds ``u = -Phi^T r`` instead of the residual ``r``.
    """
    K = dictionary.shape[-1]
    if enc.shape[-1] != 2 * K:
        raise ValueError(f"encoder output has {enc.shape[-1]} values per sample; K = {K} needs 2 * K")
    dmu, dv = enc[..., :K], enc[..., K:]
    ls0 = torch.tanh(prior_log_sigma / _C) * _C  # (M, K)
    w0 = torch.exp(ls0 * -2.0).unsqueeze(-2)  # (M, 1, K)
    # c tanh(y / c) = c - 2c sigmoid(-2y / c), y = ls0 + dv: three passes (tanh costs ~3 exps on a CPU)
    ls = torch.add(ls0.unsqueeze(-2) * (-2.0 / _C), dv, alpha=-2.0 / _C).sigmoid_()
    ls = torch.add(ls.new_full((), _C), ls, alpha=-2.0 * _C, out=ls)
    sigma = torch.exp(ls)
    sigma2 = torch.mul(sigma, sigma)  # used four times below
    mean, var, cdf, phi = relu_moment_terms(torch.add(dmu, prior_mu.unsqueeze(-2)).div_(sigma))
    mean.mul_(sigma)
    var.mul_(sigma2)
    if use_gram(x.shape[-1], K):  # r_or_u: u = -Phi^T r (M, B, K); else r = x - Phi m (M, B, D)
        sq_err, r_or_u, column_norms = gram_forward(x, dictionary, mean)
        column_norms = column_norms.unsqueeze(-2)  # (M, 1, K)
    else:
        r_or_u = residual(x, dictionary, mean)
        column_norms = (dictionary * dictionary).sum(-2, keepdim=True)  # (M, 1, K)
        sq_err = torch.linalg.vecdot(r_or_u, r_or_u)
    # KL: 1/2 w0 (dmu^2 + sigma^2) - ls, summed, + sum ls0 - K/2
    spread = torch.addcmul(sigma2, dmu, dmu)  # dmu^2 + sigma^2, kept for the prior's gradient
    if per_sample:
        var_sum = spread_sum = None
        recon = sq_err + torch.bmm(var, column_norms.transpose(-1, -2)).squeeze(-1)
        kl_terms = torch.mul(spread, 0.5 * w0).sub_(ls)
        kl = kl_terms.sum(-1) + (ls0.sum(-1, keepdim=True) - 0.5 * K)
    else:  # sums over the batch first: (M, K) vectors, no (M, B, K) KL terms
        B = enc.shape[-2]
        var_sum, spread_sum = var.sum(-2), spread.sum(-2)
        recon = sq_err.sum(-1) + torch.linalg.vecdot(var_sum, column_norms.squeeze(-2))
        kl = (0.5 * torch.linalg.vecdot(spread_sum, w0.squeeze(-2)) - ls.sum((-2, -1))
              + B * (ls0.sum(-1) - 0.5 * K))
    state = (r_or_u, x, enc, sigma, sigma2, spread, ls, mean, var, cdf, phi, w0, ls0, prior_log_sigma, dictionary,
             column_norms, var_sum, spread_sum)
    return recon, kl, state


def fused_backward(state: tuple[Tensor, ...], w_r: Weight, w_k: Weight, needs: tuple[bool, ...],
                   enc_grad_out: Tensor | None = None) -> list[Tensor | None]:
    """Gradients of ``sum w_r recon + w_k KL`` (weights: :mod:`.weights`) with respect
    to ``(x, enc, mu0, raw log-scale0, Phi)``, those that ``needs`` asks for; ``dF/denc``
    goes into ``enc_grad_out`` if given.

    Per element: ``dF/dm = -2 w_r Phi^T r``, ``dF/dv = w_r c``; through the
    moments (see ``functional._ReluMoments``) to ``dF/dmu`` and ``dF/dsigma``;
    ``dKL/d dmu = w0 dmu``, ``dKL/d ls = w0 sigma^2 - 1``; ``d ls / d dv = 1 - (ls/c)^2``.
    The prior: ``dF/dmu0 = sum_b dF/dmu``; ``dF/d ls0 = sum_b dF/d dv + sum_b w_k
    (1 - w0 (dmu^2 + sigma^2))``, times the guard's slope. The dictionary:
    ``dF/dPhi = -2 (w_r r)^T m + 2 Phi diag(sum_b w_r v)``.
    """
    (r_or_u, x, enc, sigma, sigma2, spread, ls, mean, var, cdf, phi, w0, ls0, prior_log_sigma, dictionary,
     column_norms, var_sum, spread_sum) = state
    need_x, need_enc, need_mu0, need_ls0, need_dict = needs
    K = dictionary.shape[-1]
    dmu = enc[..., :K]
    gram = use_gram(x.shape[-1], K)
    # data space: dF/dx_hat = -2 w_r r, as a tensor r_w and the products' alpha
    r_w, alpha = (r_or_u * w_r, -2.0) if isinstance(w_r, Tensor) else (r_or_u, -2.0 * w_r)
    if gram:
        g_mean = torch.mul(r_or_u, 2.0 * w_r)  # 2 w_r u = -2 w_r Phi^T r, (M, B, K)
    else:
        # -2 w_r Phi^T r, (M, B, K): the weight rides in the product (beta = 0 ignores the input)
        g_mean = torch.baddbmm(r_w.new_zeros(()), r_w, dictionary, beta=0.0, alpha=alpha)
    g_enc = torch.empty_like(enc) if enc_grad_out is None else enc_grad_out
    g_dmu, g_dv = g_enc[..., :K], g_enc[..., K:]
    # through the moments, with dF/dv = w_r c: dF/dmu = g_m cdf + 2 g_v m (1 - cdf)
    torch.mul(g_mean, cdf, out=g_dmu)
    tmp = torch.addcmul(mean, mean, cdf, value=-1.0).mul_(column_norms)
    add_weighted_(g_dmu, tmp, w_r, 2.0)
    # dF/dsigma = g_m phi + 2 g_v (sigma cdf - m phi); then dF/dls = sigma dF/dsigma + w_k (w0 sigma^2 - 1)
    torch.mul(sigma, cdf, out=tmp).addcmul_(mean, phi, value=-1.0).mul_(column_norms)
    g_ls = add_weighted_(g_mean.mul_(phi), tmp, w_r, 2.0).mul_(sigma)
    torch.mul(sigma2, w0, out=tmp).sub_(1.0)
    add_weighted_(g_ls, tmp, w_k)
    # through the guard: d ls / d dv = 1 - (ls / c)^2
    torch.addcmul(ls.new_ones(()), ls, ls, value=-1.0 / _C**2, out=tmp)
    torch.mul(g_ls, tmp, out=g_dv)
    grads: list[Tensor | None] = [None] * 5
    if need_mu0:  # mu = mu0 + dmu reaches F through the moments only (the KL sees dmu)
        grads[2] = g_dmu.sum(-2)
    # the KL's own dmu term: w_k w0 dmu
    torch.mul(dmu, w0, out=tmp)
    add_weighted_(g_dmu, tmp, w_k)
    if need_x:  # dF/dx = sum_m 2 w_r r
        if gram:
            r = residual(x, dictionary, mean)
            r_w = r * w_r if isinstance(w_r, Tensor) else r
        grads[0] = r_w.sum(0).mul_(2.0 if isinstance(w_r, Tensor) else 2.0 * w_r)
    if need_enc:
        grads[1] = g_enc
    if need_ls0:
        kl_spread = batch_sum(w_k, spread, spread_sum)  # sum_b w_k (dmu^2 + sigma^2)
        g_ls0 = g_dv.sum(-2) + weight_total(w_k, enc.shape[-2]) - w0.squeeze(-2) * kl_spread
        grads[3] = g_ls0 * (1.0 - (ls0 / _C) ** 2)
    if need_dict:
        g_var_sum = batch_sum(w_r, var, var_sum)  # sum_b w_r v, (M, K)
        if gram:
            grads[4] = gram_dictionary_grad(x, dictionary, mean, w_r, g_var_sum)
        else:
            grads[4] = torch.baddbmm(dictionary * (2.0 * g_var_sum).unsqueeze(-2), r_w.transpose(-1, -2), mean,
                                     alpha=alpha)
    return grads


class RectifiedLinearFreeEnergy(torch.autograd.Function):
    """:func:`fused_forward` and :func:`fused_backward` as one autograd function:
    ``(x, enc, mu0, raw log-scale0, Phi) -> (recon, KL)``, each (M, B)."""

    @staticmethod
    def forward(ctx, x: Tensor, enc: Tensor, prior_mu: Tensor, prior_log_sigma: Tensor, dictionary: Tensor):
        recon, kl, state = fused_forward(x, enc, prior_mu, prior_log_sigma, dictionary)
        ctx.save_for_backward(*state)
        return recon, kl

    @staticmethod
    def backward(ctx, g_recon: Tensor, g_kl: Tensor):
        return tuple(fused_backward(ctx.saved_tensors, g_recon.unsqueeze(-1), g_kl.unsqueeze(-1),
                                    ctx.needs_input_grad[:5]))
