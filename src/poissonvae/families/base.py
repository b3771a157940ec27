"""The interface every latent family implements.

A family turns encoder output and prior parameters into a posterior, and knows
that posterior's KL to the prior, the mean and variance of the decoder input
``h``, and how to sample ``h`` (relaxed, differentiable; or exact). Nothing
outside a family branches on its name: the model, trainer and metrics only call
these methods. Adding a family means one file and one registry entry.

Shapes: ``M`` models, ``B`` samples, ``K`` latent units. Encoder output is
``(M, B, n_params * K)``; prior parameters are ``(M, K)``; posterior tensors and
everything returned are ``(M, B, K)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor

from ..functional import linear_reconstruction as _linear_reconstruction

Posterior = dict[str, Tensor]


class ExactGradients(NamedTuple):
    """The closed-form free-energy terms of a linear decoder and the gradients of
    their weighted sum (see :meth:`LatentFamily.exact_gradients`)."""

    recon: Tensor  # (M,), summed over the batch
    kl: Tensor  # (M,), summed over the batch
    enc: Tensor  # dF/denc, (M, B, n K)
    dictionary: Tensor | None  # dF/dPhi, (M, D, K); None when Phi needs no gradient
    prior: dict[str, Tensor]  # dF/d(prior tensor), (M, K), for those that need a gradient


class LatentFamily(ABC):
    """Base class of latent families (see module docstring for shapes)."""

    name: str = ""
    #: encoder outputs per latent unit (1 for a rate, 2 for a mean and a scale)
    n_params: int = 1
    #: whether the prior is learned unless the config says otherwise
    learn_prior_default: bool = True
    #: whether ``rsample`` depends on a temperature (relaxed discrete families)
    uses_temperature: bool = False
    #: whether the K units are one coupled variable (categorical), so that a unit's
    #: own KL term says nothing about whether it is used (dead-neuron analysis
    #: then looks at decoder norms, as P-VAE Fig. 10 does for the C-VAE)
    coupled_units: bool = False

    @abstractmethod
    def init_prior(self, n_models: int, K: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Initial prior parameters, each ``(n_models, K)``."""

    @abstractmethod
    def posterior(self, enc: Tensor, prior: dict[str, Tensor]) -> Posterior:
        """Posterior parameters from encoder output (residual on the prior)."""

    @abstractmethod
    def kl(self, post: Posterior) -> Tensor:
        """Elementwise KL(q || p), ``(M, B, K)``."""

    @abstractmethod
    def moments(self, post: Posterior) -> tuple[Tensor, Tensor]:
        """Mean and variance of the decoder input ``h`` under q."""

    @abstractmethod
    def rsample(
        self,
        post: Posterior,
        temperature: float,
        hard: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Differentiable sample of ``h``; ``hard`` = straight-through."""

    @abstractmethod
    def sample(self, post: Posterior, generator: torch.Generator | None = None) -> Tensor:
        """Exact sample of ``h`` (temperature 0), no gradient."""

    def exact_terms(self, enc: Tensor, prior: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and variance of ``h`` and the KL summed over units, ``(M, B)``: what
        the closed-form objective (eq. 21) needs. Families may override this with
        a fused computation; the result must equal this composition."""
        post = self.posterior(enc, prior)
        mean, var = self.moments(post)
        return mean, var, self.kl(post).sum(-1)

    def linear_reconstruction(self, x: Tensor, dictionary: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """E_q ||x - Phi h||^2 for a linear decoder, ``(M, B)`` (eq. 17). The default
        assumes independent units (a diagonal covariance of ``h``); families whose
        units are coupled (one categorical variable) override it."""
        return _linear_reconstruction(x, dictionary, mean, var)

    def exact_objective(self, x: Tensor, enc: Tensor, prior: dict[str, Tensor],
                        dictionary: Tensor) -> tuple[Tensor, Tensor]:
        """Closed-form free-energy terms of a linear decoder (eqs. 17, 20-21): the
        reconstruction ``E_q ||x - Phi h||^2`` and the KL, each ``(M, B)``, from the
        shared input ``x`` ``(B, D)``, encoder output, prior and ``Phi`` ``(M, D, K)``.
        Families may fuse the whole computation; the result must equal this one."""
        mean, var, kl = self.exact_terms(enc, prior)
        return self.linear_reconstruction(x, dictionary, mean, var), kl

    def exact_gradients(self, x: Tensor, enc: Tensor, prior: dict[str, Tensor], dictionary: Tensor,
                        recon_weight: float, kl_weight: Tensor,
                        enc_grad_out: Tensor | None = None) -> ExactGradients:
        """What a training step of the closed-form objective needs: the terms of
        :meth:`exact_objective` summed over the batch, and the gradients of
        ``F = sum_{m, b} recon_weight * recon[m, b] + kl_weight[m] * KL[m, b]``
        (``kl_weight`` ``(M,)``; the trainer's are ``1 / B`` and ``beta_m / B``) with
        respect to ``enc``, ``dictionary`` and each prior tensor, those that require
        a gradient (``enc``'s always). ``enc_grad_out`` (shaped and strided like
        ``enc``) is where a fused family may write the gradient of ``enc`` instead of
        a fresh tensor (the trainer's split step passes a slice of its buffer); this
        default ignores it.

        This default differentiates :meth:`exact_objective` with autograd; fused
        families write the backward out and build no graph at all.
        """
        enc = enc.detach().requires_grad_()
        learned = {name: t for name, t in prior.items() if t.requires_grad}
        wrt = [enc, *learned.values()] + ([dictionary] if dictionary.requires_grad else [])
        with torch.enable_grad():
            recon, kl = self.exact_objective(x, enc, prior, dictionary)
            total = (recon.sum(-1) * recon_weight + kl.sum(-1) * kl_weight).sum()
            grads = torch.autograd.grad(total, wrt, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
        g_dict = grads[-1] if dictionary.requires_grad else None
        return ExactGradients(recon.detach().sum(-1), kl.detach().sum(-1), grads[0], g_dict,
                              dict(zip(learned, grads[1:])))

    def compile_kernels(self, enabled: bool = True) -> bool:
        """Use ``torch.compile``d kernels where the family has them; returns whether
        it now does (the default family has none)."""
        return False

    def max_rate(self, post: Posterior) -> Tensor | None:
        """Largest rate in the batch for families whose sampler is sized by it
        (the Poisson sampler's ``n_exp``); ``None`` for the others."""
        return None
