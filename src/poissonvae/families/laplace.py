"""Laplace latents: the L-VAE control of the P-VAE paper (a sparsity-inducing prior)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import LatentFamily, Posterior
from .gaussian import residual_location_scale


def laplace_kl(mu: Tensor, scale: Tensor, prior_mu: Tensor, prior_scale: Tensor) -> Tensor:
    """KL(Laplace(mu, b) || Laplace(mu0, b0)), elementwise, in closed form:

    ``log(b0 / b) + |mu - mu0| / b0 + (b / b0) exp(-|mu - mu0| / b) - 1``

    (from E_q|z - mu0| = d + b exp(-d / b) with d = |mu - mu0|). Zero when q = p.
    """
    d = (mu - prior_mu).abs()
    return torch.log(prior_scale / scale) + d / prior_scale + (scale / prior_scale) * torch.exp(-d / scale) - 1.0


class LaplaceFamily(LatentFamily):
    """``q = Laplace(mu0 + delta_mu, b0 exp(delta_v))``, ``p = Laplace(mu0, b0)``; ``h = z``.

    Encoder output holds ``delta_mu`` (first ``K``) and the log-scale residual
    ``delta_v`` (last ``K``), as for the Gaussian families. The prior starts at
    (and by default stays) Laplace(0, 1). Decoder-input moments: mean ``mu``,
    variance ``2 b^2``, so the linear decoder's objective is closed form (eq. 17).
    """

    name = "laplace"
    n_params = 2
    learn_prior_default = False

    def init_prior(self, n_models: int, K: int, generator: torch.Generator) -> dict[str, Tensor]:
        return {"mu": torch.zeros(n_models, K), "log_scale": torch.zeros(n_models, K)}

    def posterior(self, enc: Tensor, prior: dict[str, Tensor]) -> Posterior:
        mu, b, mu0, b0 = residual_location_scale(enc, prior["mu"], prior["log_scale"])
        return {"mu": mu, "scale": b, "prior_mu": mu0, "prior_scale": b0}

    def kl(self, post: Posterior) -> Tensor:
        return laplace_kl(post["mu"], post["scale"], post["prior_mu"], post["prior_scale"])

    def moments(self, post: Posterior) -> tuple[Tensor, Tensor]:
        return post["mu"], 2.0 * post["scale"] ** 2

    def _z(self, post: Posterior, generator: torch.Generator | None) -> Tensor:
        # inverse CDF: z = mu - b sign(u) log(1 - 2|u|), u ~ U(-1/2, 1/2)
        mu = post["mu"]
        u = torch.rand(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device) - 0.5
        u = u.clamp(-0.5 + 1e-7, 0.5 - 1e-7)
        return mu - post["scale"] * torch.sign(u) * torch.log1p(-2.0 * u.abs())

    def rsample(self, post, temperature, hard=False, generator=None) -> Tensor:
        return self._z(post, generator)

    def sample(self, post, generator=None) -> Tensor:
        with torch.no_grad():
            return self._z(post, generator)
