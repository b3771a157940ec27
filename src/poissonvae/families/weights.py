"""Weights of the summed free energy in the fused closed forms' backward passes.

The fused objectives (:mod:`.poisson_fused`, :mod:`.rectified`) differentiate
``sum_{m, b} w_r[m, b] recon[m, b] + w_k[m, b] KL[m, b]``. Autograd hands them
per-sample weights ``(M, B)``; the trainer's explicit step
(``LatentFamily.exact_gradients``) has the same weight for every sample,
``1 / B`` for the reconstruction and ``beta_m / B`` for the KL. So a weight is

* a number: the same for every sample of every model. A product takes it as
  its ``alpha``, so it costs no pass over the ``(M, B, .)`` tensors;
* a tensor broadcastable to ``(M, B, 1)``: ``(M, B, 1)`` per sample or
  ``(M, 1, 1)`` per model.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

Weight = Union[float, Tensor]


def per_model(w: Weight) -> bool:
    """Whether ``w`` is the same for every sample of a model (a number or ``(M, 1, 1)``)."""
    return not isinstance(w, Tensor) or w.shape[-2] == 1


def batch_sum(w: Weight, t: Tensor, t_sum: Tensor | None = None) -> Tensor:
    """``sum_b w_b t_b``, ``(M, K)``, for ``t`` ``(M, B, K)``; ``t_sum`` is ``t.sum(-2)``
    if the caller has it (used only when ``w`` is per model)."""
    if per_model(w):
        t_sum = t.sum(-2) if t_sum is None else t_sum
        return t_sum * (w if not isinstance(w, Tensor) else w.squeeze(-1))
    return torch.bmm(w.transpose(-1, -2), t).squeeze(-2)


def weight_total(w: Weight, batch: int) -> Weight:
    """``sum_b w_b``: a number, or ``(M, 1)``."""
    if not isinstance(w, Tensor):
        return w * batch
    return w.sum(-2) if w.shape[-2] != 1 else w.squeeze(-1) * batch


def add_weighted_(out: Tensor, t: Tensor, w: Weight, value: float = 1.0) -> Tensor:
    """``out += value * w * t`` in place (one pass whatever ``w`` is)."""
    if isinstance(w, Tensor):
        return out.addcmul_(t, w, value=value)
    return out.add_(t, alpha=value * w)
