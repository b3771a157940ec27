"""The linear VAE (lin|lin) of the metabolic-cost appendix, stacked over models.

Every parameter has a leading *model* axis of size ``M``, so ``M`` variants
(different beta or seed, same family and K) train in one pass over a shared
batch: the encoder is one ``(B, D) x (D, M * n * K)`` matrix product on the
shared input, the decoder a batched product per model. A single model is
``M = 1``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .families import LatentFamily, Posterior, get_family


def make_family(cfg: ModelConfig) -> LatentFamily:
    """The latent family a model config names, with the options it accepts."""
    from .families import FAMILIES

    cls = FAMILIES.get(cfg.family)
    options = {"indicator": cfg.indicator, "n_exp": cfg.n_exp}
    accepted = inspect.signature(cls.__init__).parameters if cls else {}
    return get_family(cfg.family, **{k: v for k, v in options.items() if k in accepted})


@dataclass
class Output:
    """Per-model, per-sample terms of the free energy (eq. 20), each ``(M, B)``."""

    recon: Tensor
    kl: Tensor
    post: Posterior | None  # None for the fused exact path

    def free_energy(self, beta: Tensor) -> Tensor:
        """``F = L_recon + beta * D_KL`` with per-model ``beta`` ``(M,)``; ``(M, B)``."""
        return self.recon + beta.unsqueeze(-1) * self.kl


class LinearVAE(nn.Module):
    """``M`` linear VAEs of one family: ``enc(x) = W x``, ``x_hat = Phi h`` (no bias).

    Parameters (``n`` = ``family.n_params``, ``D`` = input size):
        ``encoder``: ``(M, n * K, D)``; ``dictionary`` (Phi): ``(M, D, K)``;
        ``prior_<name>``: ``(M, K)``, learned unless the family/config fixes it.

    Args:
        cfg: model config (family, K, input size, init scale).
        seeds: one initialisation seed per model; ``M = len(seeds)``.
    """

    def __init__(self, cfg: ModelConfig, seeds: Sequence[int] = (0,)) -> None:
        super().__init__()
        cfg.validate()
        if len(seeds) < 1:
            raise ValueError("seeds must name at least one model")
        self.cfg = cfg
        self.family = make_family(cfg)
        M, K, D, n = len(seeds), cfg.K, cfg.input_dim, self.family.n_params
        enc, dic, priors = [], [], []
        for seed in seeds:  # per-model generators: a model's init does not depend on its group
            g = torch.Generator().manual_seed(int(seed))
            enc.append(torch.randn(n * K, D, generator=g) * cfg.init_std)
            dic.append(torch.randn(D, K, generator=g) * cfg.init_std)
            priors.append(self.family.init_prior(1, K, g))
        self.encoder = nn.Parameter(torch.stack(enc))
        self.dictionary = nn.Parameter(torch.stack(dic))
        learn = self.family.learn_prior_default if cfg.learn_prior is None else cfg.learn_prior
        self.prior_names = sorted(priors[0])
        for name in self.prior_names:
            value = torch.cat([p[name] for p in priors])
            if learn:
                self.register_parameter(f"prior_{name}", nn.Parameter(value))
            else:
                self.register_buffer(f"prior_{name}", value)

    @property
    def n_models(self) -> int:
        return self.encoder.shape[0]

    def prior(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"prior_{name}") for name in self.prior_names}

    def encoder_output(self, x: Tensor) -> Tensor:
        """``W x`` of every model, ``(M, B, n * K)``, as one product on the shared input."""
        M, nK, D = self.encoder.shape
        return (x @ self.encoder.reshape(M * nK, D).T).reshape(x.shape[0], M, nK).transpose(0, 1)

    def encode(self, x: Tensor) -> Posterior:
        """Posterior of every model for a shared batch ``x`` ``(B, D)``."""
        return self.family.posterior(self.encoder_output(x), self.prior())

    def decode(self, h: Tensor) -> Tensor:
        """``x_hat = Phi h``: ``(M, B, K)`` -> ``(M, B, D)``."""
        return h @ self.dictionary.transpose(-1, -2)

    def forward(
        self,
        x: Tensor,
        estimator: str = "exact",
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Output:
        """Free-energy terms for a shared batch ``x`` ``(B, D)``.

        ``exact``: closed-form reconstruction (eqs. 17, 21) from the moments of
        ``h``; ``mc``: one relaxed sample per input; ``st``: integer samples
        forward, relaxed gradient backward.
        """
        if estimator == "exact":
            mean, var, kl = self.family.exact_terms(self.encoder_output(x), self.prior())
            return Output(recon=self.family.linear_reconstruction(x, self.dictionary, mean, var), kl=kl, post=None)
        if estimator not in ("mc", "st"):
            raise ValueError(f"unknown estimator {estimator!r}; expected 'exact', 'mc' or 'st'")
        post = self.encode(x)
        h = self.family.rsample(post, temperature, hard=estimator == "st", generator=generator)
        recon = ((x - self.decode(h)) ** 2).sum(-1)
        return Output(recon=recon, kl=self.family.kl(post).sum(-1), post=post)

    def select(self, index: int) -> dict[str, Tensor]:
        """The state of model ``index`` alone, with a model axis of size 1."""
        return {k: v[index : index + 1].detach().clone() for k, v in self.state_dict().items()}
