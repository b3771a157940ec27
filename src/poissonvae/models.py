"""The linear VAE (lin|lin) of the metabolic-cost appendix, stacked over models,
the base class it shares with the conv architectures (:mod:`poissonvae.conv`),
and :func:`build_model`, which picks the class that ``ModelConfig.arch`` names.

Every parameter has a leading *model* axis of size ``M``, so ``M`` variants
(different beta or seed, same family and K) train in one pass over a shared
batch: the encoder is one batched product on the shared input (each model's
``W`` against the same ``x``, no copy of it), the decoder a batched product
per model. A single model is ``M = 1``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .families import LatentFamily, Posterior, get_family
from .families.base import ExactGradients


# Ref. code: the Poisson prior's log-rates start in U(-6, -4) for a linear
# decoder and at -2 otherwise; a nonlinear decoder fed almost only zeros would
# get no signal to learn from at the start.
NONLINEAR_DECODER_PRIOR_INIT = (-2.0, -2.0)


def make_family(cfg: ModelConfig) -> LatentFamily:
    """The latent family a model config names, with the options it accepts."""
    from .families import FAMILIES

    cls = FAMILIES.get(cfg.family)
    options = {"indicator": cfg.indicator, "n_exp": cfg.n_exp}
    if getattr(cfg, "arch", "lin|lin") == "conv|conv":
        options["prior_init"] = NONLINEAR_DECODER_PRIOR_INIT
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


class StackedVAE(nn.Module):
    """What every stacked architecture shares: priors, posterior, free-energy terms.

    A subclass sets ``self.cfg``, ``self.family`` and ``self._n_models``, registers
    its networks, a ``dictionary`` parameter ``(M, D, K)`` if its decoder is linear
    (or ``None`` if it is not), then calls :meth:`_register_priors`; and it
    implements :meth:`encoder_output` and :meth:`decode`.
    """

    cfg: ModelConfig
    family: LatentFamily
    _n_models: int

    @property
    def n_models(self) -> int:
        return self._n_models

    @property
    def linear_decoder(self) -> bool:
        """Whether ``x_hat = Phi h`` with ``Phi = self.dictionary`` (closed-form objective)."""
        return getattr(self, "dictionary", None) is not None

    def _register_priors(self, priors: list[dict[str, Tensor]]) -> None:
        """Stack per-model prior parameters ``(1, K)`` into ``prior_<name>`` ``(M, K)``."""
        cfg = self.cfg
        learn = self.family.learn_prior_default if cfg.learn_prior is None else cfg.learn_prior
        self.prior_names = sorted(priors[0])
        for name in self.prior_names:
            value = torch.cat([p[name] for p in priors])
            if learn:
                self.register_parameter(f"prior_{name}", nn.Parameter(value))
            else:
                self.register_buffer(f"prior_{name}", value)

    def _check_input(self, x: Tensor) -> None:
        D = self.cfg.input_dim
        if x.dim() != 2 or x.shape[1] != D:
            raise ValueError(f"expected a batch of flattened inputs (B, {D}), got shape {tuple(x.shape)}")

    def prior(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"prior_{name}") for name in self.prior_names}

    def encoder_output(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Encoder output of every model for a shared batch ``x`` ``(B, D)``: ``(M, B, n * K)``."""
        raise NotImplementedError

    def decode(self, h: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Decoder of every model: ``(M, B, K)`` -> ``(M, B, D)``."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Posterior:
        """Posterior of every model for a shared batch ``x`` ``(B, D)``."""
        return self.family.posterior(self.encoder_output(x), self.prior())

    def forward(
        self,
        x: Tensor,
        estimator: str = "exact",
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Output:
        """Free-energy terms for a shared batch ``x`` ``(B, D)``.

        ``exact``: closed-form reconstruction (eqs. 17, 21) from the moments of
        ``h``, linear decoders only; ``mc``: one relaxed sample per input;
        ``st``: integer samples forward, relaxed gradient backward.
        """
        if estimator not in ("exact", "mc", "st"):
            raise ValueError(f"unknown estimator {estimator!r}; expected 'exact', 'mc' or 'st'")
        if estimator == "exact" and not self.linear_decoder:
            # eqs. (17), (21) take E_q||x - Phi h||^2 through the mean and variance
            # of h, which needs x_hat linear in h; a conv decoder is not.
            raise ValueError(
                f"estimator 'exact' needs a linear decoder (closed form of eqs. 17, 21), but arch "
                f"{self.cfg.arch!r} has a nonlinear decoder; use estimator 'mc' or 'st'")
        self._check_input(x)
        if estimator == "exact":
            return self.exact_output(x, self.encoder_output(x))
        post = self.encode(x)
        h = self.family.rsample(post, temperature, hard=estimator == "st", generator=generator)
        recon = ((x - self.decode(h)) ** 2).sum(-1)
        return Output(recon=recon, kl=self.family.kl(post).sum(-1), post=post)

    def exact_output(self, x: Tensor, enc: Tensor) -> Output:
        """The closed-form free-energy terms (eqs. 17, 21) from the encoder output
        ``enc`` of the batch ``x`` (linear decoders only)."""
        recon, kl = self.family.exact_objective(x, enc, self.prior(), self.dictionary)
        return Output(recon=recon, kl=kl, post=None)

    def exact_gradients(self, x: Tensor, enc: Tensor, tensors: dict[str, Tensor] | None, recon_weight: float,
                        kl_weight: Tensor, enc_grad_out: Tensor | None = None) -> ExactGradients:
        """:meth:`LatentFamily.exact_gradients` for the models whose decoder and prior
        ``tensors`` (from :meth:`piece_tensors`; ``None``: the whole stack's parameters
        and buffers) and encoder output ``enc`` are given."""
        if tensors is None:
            prior, dictionary = self.prior(), self.dictionary
        else:
            prior = {name: tensors[f"prior_{name}"] for name in self.prior_names}
            dictionary = tensors["dictionary"]
        return self.family.exact_gradients(x, enc, prior, dictionary, recon_weight, kl_weight, enc_grad_out)

    def piece_tensors(self, models: slice) -> dict[str, Tensor]:
        """The dictionary and prior tensors of ``models`` (a slice of the model axis),
        keyed by their names in :meth:`state_dict`: detached views, made leaves that
        require a gradient where the parameter does, so that one piece of the stack
        can be differentiated on its own (see ``Trainer``)."""
        out = {}
        for name in ["dictionary", *(f"prior_{n}" for n in self.prior_names)]:
            value = getattr(self, name)
            out[name] = value[models].detach().requires_grad_(value.requires_grad)
        return out

    @torch.no_grad()
    def decoder_atoms(self) -> Tensor:
        """What each latent unit writes into the image, ``(M, D, K)``: the dictionary
        ``Phi`` of a linear decoder; for a nonlinear one, ``dec(e_k) - dec(0)``, the
        response to one spike of unit ``k`` alone, relative to the empty code."""
        if self.linear_decoder:
            return self.dictionary.detach().clone()
        K = self.cfg.K
        ref = next(self.parameters())
        codes = torch.cat([torch.zeros(1, K), torch.eye(K)]).to(ref.device, ref.dtype)
        out = self.decode(codes.expand(self.n_models, K + 1, K))  # (M, K + 1, D)
        return (out[:, 1:] - out[:, :1]).transpose(-1, -2)

    def select(self, index: int) -> dict[str, Tensor]:
        """The state of model ``index`` alone, with a model axis of size 1."""
        if not 0 <= index < self.n_models:
            raise IndexError(f"model index {index} out of range for {self.n_models} models")
        return {k: v[index : index + 1].detach().clone() for k, v in self.state_dict().items()}


class _SharedInputProduct(torch.autograd.Function):
    """``enc[m] = x W[m]^T`` for every model ``m`` of a stack, ``x`` (B, D) shared,
    ``W`` (M, n K, D): a batched product over one input broadcast along the model
    axis (no copy of ``x`` per model), and, backward, ``dF/dW[m] = g[m]^T x``.

    Why not one ``(B, D) x (D, M n K)`` product: its output is laid out sample-major,
    so every model's ``(B, n K)`` block is strided and each later elementwise pass
    runs row by row; and at ``M n K = 8192`` the single product took 26.6-26.9 ms against
    the batched one's 23.8 ms on the 2-core development CPU. Writing the
    weight gradient here keeps it in the parameter's own layout (autograd of a
    transposed operand would hand back a transposed gradient, then copy it).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.bmm(x.expand(weight.shape[0], *x.shape), weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight).sum(0) if ctx.needs_input_grad[0] else None
        grad_w = _shared_input_weight_grad(x, grad) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


def _shared_input_weight_grad(x: Tensor, grad: Tensor) -> Tensor:
    """``dF/dW[m] = g[m]^T x`` for ``enc[m] = x W[m]^T``: ``(M, n K, D)`` from ``x`` (B, D)
    and ``g = dF/denc`` (M, B, n K)."""
    return torch.bmm(grad.transpose(1, 2), x.expand(grad.shape[0], *x.shape))


class LinearVAE(StackedVAE):
    """``M`` linear VAEs of one family: ``enc(x) = W x``, ``x_hat = Phi h`` (no bias).

    Parameters (``n`` = ``family.n_params``, ``D`` = input size):
        ``encoder``: ``(M, n * K, D)``; ``dictionary`` (Phi): ``(M, D, K)``;
        ``prior_<name>``: ``(M, K)``, learned unless the family/config fixes it.

    Args:
        cfg: model config (family, K, input size, init scale); ``cfg.arch`` must be lin|lin.
        seeds: one initialisation seed per model; ``M = len(seeds)``.
    """

    def __init__(self, cfg: ModelConfig, seeds: Sequence[int] = (0,)) -> None:
        super().__init__()
        cfg.validate()
        if cfg.arch != "lin|lin":
            raise ValueError(f"LinearVAE is the lin|lin model; arch {cfg.arch!r} needs build_model (ConvVAE)")
        if len(seeds) < 1:
            raise ValueError("seeds must name at least one model")
        self.cfg = cfg
        self.family = make_family(cfg)
        self._n_models = len(seeds)
        K, D, n = cfg.K, cfg.input_dim, self.family.n_params
        enc, dic, priors = [], [], []
        for seed in seeds:  # per-model generators: a model's init does not depend on its group
            g = torch.Generator().manual_seed(int(seed))
            enc.append(torch.randn(n * K, D, generator=g) * cfg.init_std)
            dic.append(torch.randn(D, K, generator=g) * cfg.init_std)
            priors.append(self.family.init_prior(1, K, g))
        self.encoder = nn.Parameter(torch.stack(enc))
        self.dictionary = nn.Parameter(torch.stack(dic))
        self._register_priors(priors)

    #: the encoder is one batched product on the shared input, so the trainer can
    #: run it once per batch however finely it splits the rest of the step, and
    #: take its weight gradient from :meth:`encoder_grads`
    single_product_encoder = True

    def encoder_output(self, x: Tensor) -> Tensor:
        """``W x`` of every model, ``(M, B, n * K)`` (contiguous), from the shared input."""
        self._check_input(x)
        return _SharedInputProduct.apply(x, self.encoder)

    def encoder_grads(self, x: Tensor, enc_grad: Tensor) -> dict[str, Tensor]:
        """The encoder's parameter gradients, keyed as in :meth:`state_dict`, from the
        gradient ``enc_grad`` of its output ``(M, B, n * K)`` for the shared batch ``x``
        (the trainer's explicit step, which runs the encoder without autograd)."""
        return {"encoder": _shared_input_weight_grad(x, enc_grad)}

    def decode(self, h: Tensor) -> Tensor:
        """``x_hat = Phi h``: ``(M, B, K)`` -> ``(M, B, D)``."""
        return h @ self.dictionary.transpose(-1, -2)


def build_model(cfg: ModelConfig, seeds: Sequence[int] = (0,)) -> StackedVAE:
    """The stacked model that ``cfg.arch`` names: :class:`LinearVAE` for lin|lin,
    :class:`~poissonvae.conv.ConvVAE` for conv|lin and conv|conv."""
    cfg.validate()
    if cfg.arch == "lin|lin":
        return LinearVAE(cfg, seeds)
    from .conv import ConvVAE  # conv imports this module

    return ConvVAE(cfg, seeds)
