"""Categorical latents: the C-VAE control of the P-VAE paper (Table 1; sec. 4,
"Alternative models"): ONE K-way categorical variable per input, so the decoder
input ``h`` is a one-hot vector of length ``K`` and ``x_hat = Phi h`` picks one
dictionary column. Trained with the Gumbel-softmax / Concrete relaxation
(P-VAE refs. [89, 98]), the discrete counterpart of the Poisson relaxation."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LatentFamily, Posterior


def _gumbel(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard Gumbel noise ``-log E``, ``E ~ Exp(1)``, shaped like ``like``.

    ``E`` is floored at the dtype's smallest normal number: an exact zero would
    give ``+inf`` noise, a NaN in the softmax and a sample independent of ``p``.
    """
    e = torch.empty_like(like).exponential_(1.0, generator=generator)
    return -torch.log(e.clamp_(min=torch.finfo(like.dtype).tiny))


def _one_hot_argmax(scores: Tensor) -> Tensor:
    """One-hot vector of the largest entry along the last axis, same shape and dtype."""
    index = scores.argmax(dim=-1, keepdim=True)
    return torch.zeros_like(scores).scatter_(-1, index, 1.0)


class CategoricalFamily(LatentFamily):
    """``q = Cat(softmax(log pi + enc))``, ``p = Cat(pi)``, uniform ``pi = 1 / K``; ``h`` one-hot.

    Encoder output ``(M, B, K)``: one logit per category (``n_params = 1``).
    The logits are a residual on the prior's log-probabilities, ``q_k ∝ pi_k
    exp(enc_k)`` (the categorical analogue of eq. 4, ``lambda = lambda0
    exp(u)``); with the fixed uniform prior of the C-VAE this is plain
    ``softmax(enc)``, and a prior learned on request stays consistent.

    Posterior: ``{"log_probs": (M, B, K), "log_prior": (M, 1, K)}``, both
    normalised (log-softmax). The units are one variable, not ``K``
    independent ones: the KL is returned per category and only its sum over
    ``K`` is a KL (the per-category terms are negative where ``p_k < pi_k``),
    and :meth:`linear_reconstruction` uses the one-hot covariance.
    """

    name = "categorical"
    n_params = 1
    learn_prior_default = False  # the C-VAE's prior is uniform and fixed
    uses_temperature = True
    coupled_units = True  # one K-way variable: per-category KL terms are not per-unit information

    def init_prior(self, n_models: int, K: int, generator: torch.Generator) -> dict[str, Tensor]:
        if n_models < 1 or K < 1:
            raise ValueError(f"need n_models >= 1 and K >= 1, got {n_models} and {K}")
        return {"logits": torch.full((n_models, K), -math.log(K))}  # uniform log-probabilities

    def posterior(self, enc: Tensor, prior: dict[str, Tensor]) -> Posterior:
        K = prior["logits"].shape[-1]
        if enc.shape[-1] != K:
            raise ValueError(
                f"encoder output has {enc.shape[-1]} logits per sample; the categorical family needs K = {K}"
            )
        # normalise, since a learned prior's logits drift; for the uniform prior this is -log K
        log_prior = torch.log_softmax(prior["logits"], dim=-1).unsqueeze(-2)  # (M, 1, K)
        return {"log_probs": torch.log_softmax(log_prior + enc, dim=-1), "log_prior": log_prior}

    def kl(self, post: Posterior) -> Tensor:
        # KL(q || p) = sum_k p_k (log p_k - log pi_k) = sum_k p_k log(p_k K) for the
        # uniform prior, from log-softmax: no log(0) (p_k underflows to 0 times a
        # finite log), no division. Returned per category, (M, B, K); sum over K.
        log_p = post["log_probs"]
        return torch.exp(log_p) * (log_p - post["log_prior"])

    def moments(self, post: Posterior) -> tuple[Tensor, Tensor]:
        p = torch.exp(post["log_probs"])
        return p, p * (1.0 - p)  # marginals: h_k ~ Bernoulli(p_k)

    def linear_reconstruction(self, x: Tensor, dictionary: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """Exact ``E_q ||x - Phi h||^2`` for one-hot ``h``, ``(M, B)``.

        Args:
            x: data ``(B, D)`` (shared by all models) or ``(M, B, D)``.
            dictionary: ``Phi``, ``(M, D, K)``.
            mean: ``p``, ``(M, B, K)``; ``var`` is ignored: the one-hot
                covariance follows from ``p`` alone.

        Derivation (eq. 17 without its independence assumption): ``h = e_k``
        with probability ``p_k``, so ``Phi h = phi_k`` and
        ``E||x - Phi h||^2 = sum_k p_k ||x - phi_k||^2
        = ||x||^2 - 2 x^T Phi p + sum_k p_k ||phi_k||^2`` (using ``sum_k p_k = 1``).
        Adding and subtracting ``||Phi p||^2``:
        ``= ||x - Phi p||^2 + sum_k p_k ||phi_k||^2 - ||Phi p||^2``.
        Equivalently ``Cov h = diag(p) - p p^T`` and the second part is
        ``tr(Phi^T Phi Cov h)``; the default (diagonal) formula would keep only
        ``sum_k p_k (1 - p_k) ||phi_k||^2`` and miss the ``-p_j p_k`` terms.
        """
        D, K = dictionary.shape[-2:]
        if x.shape[-1] != D or mean.shape[-1] != K:
            raise ValueError(
                f"shapes do not match: x {tuple(x.shape)} needs last axis D = {D} and mean "
                f"{tuple(mean.shape)} needs last axis K = {K} for a dictionary {tuple(dictionary.shape)}"
            )
        x_hat = mean @ dictionary.transpose(-1, -2)  # Phi p, (M, B, D)
        column_norms = (dictionary * dictionary).sum(-2).unsqueeze(-2)  # ||phi_k||^2, (M, 1, K)
        # the spread term is a variance, >= 0; the floor removes rounding below zero
        # when p is nearly one-hot (the two terms then nearly cancel)
        spread = ((mean * column_norms).sum(-1) - (x_hat * x_hat).sum(-1)).clamp(min=0.0)
        return ((x - x_hat) ** 2).sum(-1) + spread

    def rsample(self, post, temperature, hard=False, generator=None) -> Tensor:
        """Gumbel-softmax (Concrete) sample ``softmax((log p + G) / temperature)``, ``(M, B, K)``.

        ``hard``: the one-hot argmax forward (exactly one-hot) with the relaxed
        sample's gradient (straight-through). ``temperature = 0`` is the
        relaxation's limit, an exact one-hot sample (Gumbel-max), without
        gradient, whatever ``hard`` says (as for the Poisson sampler).
        """
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0:
            return self.sample(post, generator)
        log_p = post["log_probs"]
        scores = log_p + _gumbel(log_p, generator)
        soft = torch.softmax(scores / temperature, dim=-1)
        if not hard:
            return soft
        # soft - soft.detach() is exactly 0 forward, so the forward value is exactly one-hot
        return _one_hot_argmax(scores.detach()) + (soft - soft.detach())

    def sample(self, post, generator=None) -> Tensor:
        """Exact one-hot sample by Gumbel-max, ``argmax_k(log p_k + G_k) ~ Cat(p)``, ``(M, B, K)``."""
        with torch.no_grad():
            log_p = post["log_probs"]
            return _one_hot_argmax(log_p + _gumbel(log_p, generator))
