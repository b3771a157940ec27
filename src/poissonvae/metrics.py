"""Evaluation metrics as pure functions of tensors (x, z, x_hat, KL).

They never know which family produced ``z``. Shapes: ``x``, ``x_hat``
``(..., N, D)``; ``z`` ``(..., N, K)``; per-sample ``kl`` ``(..., N, K)``.
Leading dimensions (a model axis) are kept in the results.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def metabolic_cost(z: Tensor) -> Tensor:
    """Mean activity of ``z`` over samples and units (eq. 22): spikes per unit per input."""
    return z.mean(dim=(-2, -1))


def proportion_zeros(z: Tensor) -> Tensor:
    """Fraction of exact zeros in ``z`` (eq. 23)."""
    return (z == 0).float().mean(dim=(-2, -1))


def mse(x: Tensor, x_hat: Tensor) -> Tensor:
    """Squared error summed over pixels, averaged over samples (the P-VAE papers' MSE)."""
    return ((x - x_hat) ** 2).sum(-1).mean(-1)


def r_squared(x: Tensor, x_hat: Tensor) -> Tensor:
    """``1 - SS_res / SS_tot``, with ``SS_tot`` about the per-pixel mean of ``x``."""
    ss_res = ((x - x_hat) ** 2).sum(dim=(-2, -1))
    ss_tot = ((x - x.mean(-2, keepdim=True)) ** 2).sum(dim=(-2, -1))
    return 1.0 - ss_res / ss_tot


def overall_performance(r2: Tensor, pz: Tensor) -> Tensor:
    """Distance to perfect reconstruction and full sparsity (Fig. 6, lower is better):
    ``sqrt((1 - R^2)^2 + (1 - PZ)^2) / sqrt(2)``."""
    return torch.sqrt((1.0 - r2) ** 2 + (1.0 - pz) ** 2) / math.sqrt(2.0)


def negative_elbo(recon: Tensor, kl: Tensor) -> Tensor:
    """``F`` at beta = 1 (eq. 1): mean over samples of reconstruction plus total KL.
    ``recon`` ``(..., N)``; ``kl`` ``(..., N, K)``."""
    return (recon + kl.sum(-1)).mean(-1)


def per_unit_kl(kl: Tensor) -> Tensor:
    """KL of each latent unit averaged over samples, ``(..., K)`` (dead-neuron diagnostic)."""
    return kl.mean(-2)


def lifetime_sparsity(z: Tensor) -> Tensor:
    """Lifetime sparsity of each unit (P-VAE eq. 5), ``(..., K)``.

    ``s_j = (1 - (sum_i z_ij)^2 / (N sum_i z_ij^2)) / (1 - 1/N)``: 1 when a unit
    answers one input out of N, 0 when it answers all alike. A unit that never
    fires has no defined value; we return NaN for it (callers average with nanmean).

    The measure (Treves-Rolls, Vinje-Gallant) is defined on non-negative
    responses; signed latents (G-VAE, L-VAE, unconstrained sparse codes) enter
    as magnitudes ``|z|``, otherwise positive and negative answers cancel and
    every symmetric unit scores about 1. This is what the P-VAE paper reports:
    its G-VAE value, s = 0.37, is ``1 - 2/pi = 0.363``, the value of ``|z|``
    for ``z ~ N(0, 1)``, where its (mostly dead) units sit at the prior.
    """
    z = z.abs()
    return lifetime_sparsity_from_sums(z.sum(-2), (z**2).sum(-2), z.shape[-2])


def lifetime_sparsity_from_sums(s1: Tensor, s2: Tensor, n: int) -> Tensor:
    """P-VAE eq. (5) from per-unit sums ``s1 = sum_i |z_ij|`` and ``s2 = sum_i z_ij^2``
    over ``n`` inputs, so that it can be accumulated over batches (see
    :func:`lifetime_sparsity` for the magnitude)."""
    ratio = s1**2 / (n * s2)
    s = (1.0 - ratio) / (1.0 - 1.0 / n)
    return torch.where(s2 > 0, s, torch.full_like(s, float("nan")))
