"""Poisson latents: the P-VAE (eqs. 4, 6-8; P-VAE Algorithm 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional import poisson_kl_from_log, poisson_rsample, softclamp_upper
from .base import ExactGradients, LatentFamily, Posterior
from .poisson_fused import (LOG_RATE_MAX, LOG_RESIDUAL_MAX, PoissonExactTerms, PoissonLinearFreeEnergy,
                            fused_backward, fused_forward)

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
        rate, kl = PoissonExactTerms.apply(enc, prior["log_rate"])
        return rate, rate, kl  # Poisson: mean = variance = lambda

    def exact_objective(self, x: Tensor, enc: Tensor, prior: dict[str, Tensor], dictionary: Tensor):
        return PoissonLinearFreeEnergy.apply(x, enc, prior["log_rate"], dictionary, self.compiled)

    def exact_gradients(self, x: Tensor, enc: Tensor, prior: dict[str, Tensor], dictionary: Tensor,
                        recon_weight: float, kl_weight: Tensor,
                        enc_grad_out: Tensor | None = None) -> ExactGradients:
        # the fused forward and backward (families/poisson_fused.py) called directly, with one
        # weight per model: no autograd graph, and the reconstruction weight rides in the products
        log_rate = prior["log_rate"]
        with torch.no_grad():
            recon, kl, state = fused_forward(x, enc, log_rate, dictionary, self.compiled, per_sample=False)
            needs = (False, True, log_rate.requires_grad, dictionary.requires_grad)
            grads = fused_backward(state, float(recon_weight), kl_weight.view(-1, 1, 1), needs, self.compiled,
                                   enc_grad_out)
        return ExactGradients(recon, kl, grads[1], grads[3], {"log_rate": grads[2]} if needs[2] else {})

    def compile_kernels(self, enabled: bool = True) -> bool:
        """Run the exact objective's elementwise passes as ``torch.compile``d kernels
        (two fused loops instead of ~25 passes; needs a working compiler backend,
        and compiles once per process, ~10-20 s)."""
        self.compiled = bool(enabled)
        return self.compiled

    def max_rate(self, post: Posterior) -> Tensor:
        return torch.exp(post["log_rate"].detach().max())
