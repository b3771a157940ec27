"""Convolutional VAEs (conv|lin and conv|conv, P-VAE appendix C.2), stacked over models.

The P-VAE paper names architectures ``<encoder|decoder>`` (P-VAE sec. 4,
"Architecture notation"): conv|lin pairs a convolutional encoder with the
linear decoder ``x_hat = Phi h`` (so the closed-form objective, eqs. 17 and 21,
still holds and the learned dictionary is still ``Phi``); conv|conv also has a
convolutional decoder and trains on Monte Carlo estimates only.

Following P-VAE appendix C.2 the encoder is a residual conv net without batch
norm and with swish (SiLU) activations, and the decoder upsamples with nearest
neighbours. The paper's nets are deeper (5-7 residual layers in the encoder,
8-10 convs in the decoder) and end in learned pooling, a feed-forward block and
a layer norm; these are smaller so that they train on a CPU, and the encoder
ends in one linear read-out of the whole last feature map (a learned pooling
over positions folded into the projection). Layers, for ``C = conv_channels``
(default 16), ``n = family.n_params``, images of side ``S`` with
``S1 = ceil(S / 2)``, ``S2 = ceil(S1 / 2)``; shapes are per model, per sample:

Encoder (conv|lin and conv|conv)

============================  ==============  ==============  ==============
layer                         generic         16x16 patches   28x28 digits
============================  ==============  ==============  ==============
input image                   1 x S x S       1 x 16 x 16     1 x 28 x 28
conv 3x3                      C x S x S       16 x 16 x 16    16 x 28 x 28
residual block (2 x conv3x3)  C x S x S       16 x 16 x 16    16 x 28 x 28
conv 3x3, stride 2            2C x S1 x S1    32 x 8 x 8      32 x 14 x 14
residual block                2C x S1 x S1    32 x 8 x 8      32 x 14 x 14
conv 3x3, stride 2            2C x S2 x S2    32 x 4 x 4      32 x 7 x 7
residual block                2C x S2 x S2    32 x 4 x 4      32 x 7 x 7
swish, flatten                2C S2^2         512             1568
linear (no bias)              n K             n K             n K
============================  ==============  ==============  ==============

Decoder of conv|conv

============================  ==============  ==============  ==============
layer                         generic         16x16 patches   28x28 digits
============================  ==============  ==============  ==============
input h                       K               K               K
linear, reshape               2C x S2 x S2    32 x 4 x 4      32 x 7 x 7
residual block                2C x S2 x S2    32 x 4 x 4      32 x 7 x 7
nearest upsample, conv 3x3    C x S1 x S1     16 x 8 x 8      16 x 14 x 14
residual block                C x S1 x S1     16 x 8 x 8      16 x 14 x 14
nearest upsample, conv 3x3    C x S x S       16 x 16 x 16    16 x 28 x 28
residual block                C x S x S       16 x 16 x 16    16 x 28 x 28
swish, conv 3x3               1 x S x S       1 x 16 x 16     1 x 28 x 28
============================  ==============  ==============  ==============

A residual block is ``x + conv(swish(conv(swish(x))))`` (pre-activation, as in
the ResNets of Child's VDVAE that P-VAE appendix C.2 follows). The conv|lin
decoder is the ``(M, D, K)`` dictionary, initialised like lin|lin's.

Stacking: every parameter has the model axis first, e.g. a conv weight is
``(M, C_out, C_in, 3, 3)``. A conv layer runs all ``M`` models as one grouped
convolution on ``(B, M * C_in, H, W)`` (``groups = M``), so model ``m``'s
channels only ever meet model ``m``'s weights; the first layer sees the shared
one-channel input, which is the same as replicating it over ``M`` groups.
Linear layers are batched matrix products over the model axis. Each model's
weights are drawn from its own seeded generator, so a model trained in a group
equals the same model trained alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .models import StackedVAE, make_family


def _uniform_(t: Tensor, bound: float, g: torch.Generator) -> None:
    t.copy_((torch.rand(t.shape, generator=g, dtype=t.dtype) * 2 - 1) * bound)


class StackedConv2d(nn.Module):
    """``M`` independent ``k x k`` convolutions (zero padding ``k // 2``), one per model.

    Parameters: ``weight`` ``(M, C_out, C_in, k, k)``, ``bias`` ``(M, C_out)``.
    Input ``(B, M * C_in, H, W)``, or ``(B, C_in, H, W)`` shared by every model
    when ``shared_input``; output ``(B, M * C_out, H', W')``.
    """

    def __init__(self, M: int, c_in: int, c_out: int, stride: int = 1, kernel: int = 3,
                 shared_input: bool = False) -> None:
        super().__init__()
        self.M, self.c_in, self.c_out, self.stride, self.kernel = M, c_in, c_out, stride, kernel
        self.shared_input = shared_input
        self.weight = nn.Parameter(torch.empty(M, c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(M, c_out))

    @torch.no_grad()
    def init_model(self, m: int, g: torch.Generator) -> None:
        """Draw model ``m``'s weights from ``g``: U(-2/sqrt(fan_in), 2/sqrt(fan_in)),
        twice PyTorch's default bound, and the default U(-1/sqrt(fan_in), ...) bias.

        Why: at the default bound the activations shrink about 10x through the
        eight conv layers, the encoder's outputs at init have std ~0.06 on
        z-scored patches, every P-VAE rate starts at its prior whatever the
        input, and the conv|lin P-VAE collapses to silence (measured: KL 0.08
        nats, 100% zeros after 9 epochs). Twice the bound keeps the scale: output
        std ~0.8 on patches (lin|lin's init gives 0.81) and ~0.6 on digits."""
        fan_in = self.c_in * self.kernel**2
        _uniform_(self.weight[m], 2.0 / math.sqrt(fan_in), g)
        _uniform_(self.bias[m], 1.0 / math.sqrt(fan_in), g)

    def forward(self, x: Tensor) -> Tensor:
        M, co, ci, k = self.M, self.c_out, self.c_in, self.kernel
        # A shared input with C_in channels convolved by (M * C_out) filters of C_in
        # channels gives every model the same input: replication without copies.
        return F.conv2d(x, self.weight.reshape(M * co, ci, k, k), self.bias.reshape(M * co),
                        stride=self.stride, padding=k // 2, groups=1 if self.shared_input else M)


class StackedLinear(nn.Module):
    """``M`` independent affine maps: ``(M, B, in)`` -> ``(M, B, out)``.

    Parameters: ``weight`` ``(M, out, in)``, ``bias`` ``(M, out)`` (or none).
    """

    def __init__(self, M: int, n_in: int, n_out: int, bias: bool = True) -> None:
        super().__init__()
        self.M, self.n_in, self.n_out = M, n_in, n_out
        self.weight = nn.Parameter(torch.empty(M, n_out, n_in))
        if bias:
            self.bias = nn.Parameter(torch.empty(M, n_out))
        else:
            self.register_parameter("bias", None)

    @torch.no_grad()
    def init_model(self, m: int, g: torch.Generator) -> None:
        """PyTorch's default linear init, U(-1/sqrt(in), 1/sqrt(in)), from ``g``."""
        bound = 1.0 / math.sqrt(self.n_in)
        _uniform_(self.weight[m], bound, g)
        if self.bias is not None:
            _uniform_(self.bias[m], bound, g)

    def forward(self, x: Tensor) -> Tensor:
        wt = self.weight.transpose(1, 2)
        if self.bias is None:
            return torch.bmm(x, wt)
        return torch.baddbmm(self.bias.unsqueeze(1), x, wt)


class StackedResBlock(nn.Module):
    """``x + conv(swish(conv(swish(x))))`` for ``M`` models, ``(B, M * C, H, W)`` in and out.

    No batch norm (P-VAE appendix C.2): it would couple the samples of a batch.
    """

    def __init__(self, M: int, channels: int) -> None:
        super().__init__()
        self.conv1 = StackedConv2d(M, channels, channels)
        self.conv2 = StackedConv2d(M, channels, channels)

    def init_model(self, m: int, g: torch.Generator) -> None:
        self.conv1.init_model(m, g)
        self.conv2.init_model(m, g)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def conv_sides(side: int) -> tuple[int, int, int]:
    """Feature-map sides ``(S, S1, S2)`` of the encoder: two stride-2 convs,
    each ``ceil(s / 2)`` (kernel 3, padding 1)."""
    s1 = (side + 1) // 2
    return side, s1, (s1 + 1) // 2


class ConvEncoder(nn.Module):
    """Residual conv encoder of ``M`` models: ``(B, D)`` -> ``(M, B, n_out)`` (module table)."""

    def __init__(self, M: int, side: int, channels: int, n_out: int) -> None:
        super().__init__()
        C, (_, _, s2) = channels, conv_sides(side)
        self.M, self.side, self.width = M, side, 2 * C
        self.stem = StackedConv2d(M, 1, C, shared_input=True)
        self.res1 = StackedResBlock(M, C)
        self.down1 = StackedConv2d(M, C, 2 * C, stride=2)
        self.res2 = StackedResBlock(M, 2 * C)
        self.down2 = StackedConv2d(M, 2 * C, 2 * C, stride=2)
        self.res3 = StackedResBlock(M, 2 * C)
        # No bias: the prior's parameters already give each unit its offset (the
        # posterior is a residual on the prior, eqs. 4-5), as in lin|lin.
        self.head = StackedLinear(M, 2 * C * s2 * s2, n_out, bias=False)

    def init_model(self, m: int, g: torch.Generator) -> None:
        for layer in (self.stem, self.res1, self.down1, self.res2, self.down2, self.res3, self.head):
            layer.init_model(m, g)

    def forward(self, x: Tensor) -> Tensor:
        B, S = x.shape[0], self.side
        y = self.stem(x.reshape(B, 1, S, S))
        y = self.res3(self.down2(self.res2(self.down1(self.res1(y)))))
        y = F.silu(y).reshape(B, self.M, -1).transpose(0, 1)  # (M, B, 2C * S2 * S2)
        return self.head(y)


class ConvDecoder(nn.Module):
    """Conv decoder of ``M`` models with nearest-neighbour upsampling (P-VAE appendix
    C.2): ``(M, B, K)`` -> ``(M, B, D)`` (module table)."""

    def __init__(self, M: int, side: int, channels: int, K: int) -> None:
        super().__init__()
        C = channels
        self.M, self.C, self.sides = M, C, conv_sides(side)
        s2 = self.sides[2]
        self.fc = StackedLinear(M, K, 2 * C * s2 * s2)
        self.res1 = StackedResBlock(M, 2 * C)
        self.up1 = StackedConv2d(M, 2 * C, C)
        self.res2 = StackedResBlock(M, C)
        self.up2 = StackedConv2d(M, C, C)
        self.res3 = StackedResBlock(M, C)
        self.out = StackedConv2d(M, C, 1)

    def init_model(self, m: int, g: torch.Generator) -> None:
        for layer in (self.fc, self.res1, self.up1, self.res2, self.up2, self.res3, self.out):
            layer.init_model(m, g)

    def forward(self, h: Tensor) -> Tensor:
        M, B = h.shape[0], h.shape[1]
        S, S1, S2 = self.sides
        y = self.fc(h).transpose(0, 1).reshape(B, M * 2 * self.C, S2, S2)
        y = self.res1(y)
        y = self.res2(self.up1(F.interpolate(y, size=(S1, S1), mode="nearest")))
        y = self.res3(self.up2(F.interpolate(y, size=(S, S), mode="nearest")))
        y = self.out(F.silu(y))  # (B, M, S, S)
        return y.reshape(B, M, S * S).transpose(0, 1)


class ConvVAE(StackedVAE):
    """``M`` VAEs of one family with a residual conv encoder and a linear (conv|lin)
    or conv (conv|conv) decoder; same interface as :class:`~poissonvae.models.LinearVAE`.

    Parameters (``n`` = ``family.n_params``, ``D = S * S`` = input size):
        ``encoder.*``: the conv encoder (module docstring), each ``(M, ...)``;
        conv|lin: ``dictionary`` (Phi) ``(M, D, K)``; conv|conv: ``decoder.*``
        (and ``dictionary`` is ``None``); ``prior_<name>``: ``(M, K)``.

    Args:
        cfg: model config with ``arch`` conv|lin or conv|conv; ``input_dim`` a square.
        seeds: one initialisation seed per model; ``M = len(seeds)``.
    """

    def __init__(self, cfg: ModelConfig, seeds: Sequence[int] = (0,)) -> None:
        super().__init__()
        cfg.validate()
        if cfg.arch not in ("conv|lin", "conv|conv"):
            raise ValueError(f"ConvVAE builds conv|lin and conv|conv models, got arch {cfg.arch!r}")
        if len(seeds) < 1:
            raise ValueError("seeds must name at least one model")
        self.cfg = cfg
        self.family = make_family(cfg)
        self._n_models = M = len(seeds)
        K, D, n, C = cfg.K, cfg.input_dim, self.family.n_params, cfg.conv_channels
        side = math.isqrt(D)
        self.encoder = ConvEncoder(M, side, C, n * K)
        if cfg.arch == "conv|lin":
            self.dictionary = nn.Parameter(torch.empty(M, D, K))
            self.decoder = None
        else:
            self.register_parameter("dictionary", None)
            self.decoder = ConvDecoder(M, side, C, K)
        priors = []
        for m, seed in enumerate(seeds):  # per-model generators: init independent of the group
            g = torch.Generator().manual_seed(int(seed))
            self.encoder.init_model(m, g)
            with torch.no_grad():
                if self.decoder is None:  # ref. code: linear decoder ~ N(0, 0.05)
                    self.dictionary[m].copy_(torch.randn(D, K, generator=g) * cfg.init_std)
                else:
                    self.decoder.init_model(m, g)
            priors.append(self.family.init_prior(1, K, g))
        self._register_priors(priors)

    def encoder_output(self, x: Tensor) -> Tensor:
        """Conv encoder of every model on a shared batch ``x`` ``(B, D)``: ``(M, B, n * K)``."""
        self._check_input(x)
        return self.encoder(x)

    def decode(self, h: Tensor) -> Tensor:
        """``(M, B, K)`` -> ``(M, B, D)``: ``Phi h`` (conv|lin) or the conv decoder."""
        if h.dim() != 3 or h.shape[0] != self.n_models or h.shape[2] != self.cfg.K:
            raise ValueError(f"expected codes (M={self.n_models}, B, K={self.cfg.K}), got shape {tuple(h.shape)}")
        if self.decoder is None:
            return h @ self.dictionary.transpose(-1, -2)
        return self.decoder(h)
