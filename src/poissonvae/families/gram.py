"""The squared error of a linear decoder in latent space ("Gram form"), for the fused
closed-form objectives of :mod:`.poisson` and :mod:`.rectified` when K is small.

``|x - Phi m|^2 = |x|^2 - 2 x^T Phi m + m^T G m`` with ``G = Phi^T Phi`` (the
expectation's first part in eq. 17). Written as ``|x|^2 + m . (u - x Phi)`` with
``u = m G - x Phi = -Phi^T r``, every per-sample tensor is ``(M, B, K)``: the
``(M, B, D)`` residual is never formed, and the products on the shared input
``x Phi`` and ``x^T (g m)`` run once per batch like the encoder's. Backward, with
per-sample weights ``g`` (dF/d recon):

* ``dF/dm = 2 g u`` (no product: ``u`` is saved);
* ``dF/dPhi = 2 Phi (m^T diag(g) m + diag(e)) - 2 x^T (g m)``, where ``e`` adds the
  variance term's ``2 Phi diag(sum_b g v)`` (``e = sum_b g v``, from the caller).

A weight ``g`` the same for every sample of a model (the trainer's, see
:mod:`.weights`) scales the small products' results instead of the means.

Why only for small K: its products cost ``2 B D K + 2 B K^2 + 2 D K^2`` per model
against ``3 B D K`` in data space, so they win below K ~ D/2, and they save the
passes over ``(M, B, D)`` tensors, which outweigh the ``(M, B, K)`` ones when K is
well below D. 8 models, batch 1000, D = 256 on the 2-core development CPU (P-VAE
step, best of 4, ms, group / the same 8 models one by one): K = 64 14.0 / 21.8 in
data space, 12.0 / 20.7 here; K = 128 24.3 / 31.4 against 24.2 / 32.5 (no gain).
The subtraction inside ``|x|^2 + m . (u - x Phi)`` loses about ``log10(|x|^2 /
|r|^2)`` digits: two where the decoder explains 99% of ``|x|^2``, leaving the
error at a few float32 epsilons of ``|x|^2`` (tests/test_exact_objective.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .weights import Weight, batch_sum, per_model


def use_gram(input_dim: int, K: int) -> bool:
    """Whether the latent-space form is the faster one (``K <= D / 4``, see above)."""
    return 4 * K <= input_dim


def _shared(x: Tensor, M: int) -> Tensor:
    return x.expand(M, *x.shape)  # one input for every model, no copy


def gram_forward(x: Tensor, dictionary: Tensor, mean: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``|x - Phi m|^2`` ``(M, B)``, ``u = m G - x Phi`` ``(M, B, K)`` and the column
    norms ``c = diag(G)`` ``(M, K)``, from ``x`` (B, D), ``Phi`` (M, D, K), ``m`` (M, B, K)."""
    M = mean.shape[0]
    x_phi = torch.bmm(_shared(x, M), dictionary)
    gram = torch.bmm(dictionary.transpose(1, 2), dictionary)
    u = torch.baddbmm(x_phi, mean, gram, beta=-1.0)
    sq_err = torch.linalg.vecdot(mean, u.sub(x_phi)) + torch.linalg.vecdot(x, x)
    return sq_err, u, gram.diagonal(dim1=-2, dim2=-1)


def gram_dictionary_grad(x: Tensor, dictionary: Tensor, mean: Tensor, w: Weight,
                         extra: Tensor | None = None) -> Tensor:
    """``dF/dPhi`` ``(M, D, K)`` of ``sum_b w_b (|x_b - Phi m_b|^2 + c . v_b)`` with
    ``extra = sum_b w_b v_b`` ``(M, K)``; ``None`` when the variance is the mean
    (Poisson), whose sum is then taken here. ``w``: a :data:`.weights.Weight`; a
    per-model weight scales the ``(M, ., K)`` products' results, not the ``(M, B, K)`` means."""
    M = mean.shape[0]
    if per_model(w):
        second = torch.bmm(mean.transpose(1, 2), mean).mul_(w)  # m^T diag(w) m, (M, K, K)
        x_m = torch.bmm(_shared(x.T, M), mean).mul_(w)  # x^T (w m), (M, D, K)
        diagonal = batch_sum(w, mean) if extra is None else extra
    else:
        weighted = mean * w
        second = torch.bmm(mean.transpose(1, 2), weighted)
        x_m = torch.bmm(_shared(x.T, M), weighted)
        diagonal = weighted.sum(-2) if extra is None else extra
    second.diagonal(dim1=-2, dim2=-1).add_(diagonal)
    return torch.baddbmm(x_m, dictionary, second, beta=-2.0, alpha=2.0)


def residual(x: Tensor, dictionary: Tensor, mean: Tensor) -> Tensor:
    """``r = x - Phi m`` ``(M, B, D)``, formed only when the input's gradient is asked for."""
    return torch.baddbmm(_shared(x, mean.shape[0]), mean, dictionary.transpose(-1, -2), alpha=-1.0)
