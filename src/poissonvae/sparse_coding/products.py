"""The one product of every sparse-coding iteration, the gradient of
``f(z) = 1/2 ||x - Phi z||^2`` for code rows ``z`` ``(B, K)``, in two forms:

- :class:`GradientStep` (ISTA, LCA: one fixed step ``s`` for the whole batch):
  ``z -> z - s grad f(z)``, with ``s`` folded into the matrix once per call;
- :class:`Gradient` (FISTA, whose backtracking gives every sample its own
  step): ``z -> grad f(z) = z Phi^T Phi - x Phi``.

With ``K <= 2D`` both work in code space through a ``(K, K)`` matrix formed once
(``B K^2`` multiply-adds per call); for larger K the two thin products through
Phi (``2 B D K``) are cheaper.

On the CPU the product exploits the sparsity of the codes: when fewer than
``SPARSE_BELOW[dtype]`` of the entries are non-zero, only the non-zeros are
multiplied (:func:`pack_rows`, :func:`addmm_rows`): row ``b`` of ``z M`` is
``sum_j z_bj M_j``, a weighted sum of rows of ``M``. In float32 that is exactly
``embedding_bag`` with per-sample weights, whose FBGEMM kernel does it 3x faster
than a CSR x dense product; float64 uses the CSR product (its embedding_bag has
no fast kernel). Both compute the same sums as the dense product in another
order, so results agree to rounding.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

# Density of non-zeros below which the CPU product multiplies only the non-zeros,
# per dtype. Measured (B = 1000, K = 512, AMD EPYC, 2 threads, packing included,
# against a 2.9 ms float32 / 7.4 ms float64 dense product): float32 through
# embedding_bag 1.5 ms at 7.5% non-zeros, 2.3 ms at 15%, even near 20%; float64
# through CSR 4.0 ms at 7.5%, even near 17%.
SPARSE_BELOW = {torch.float32: 0.18, torch.float64: 0.15}


class BagRows(NamedTuple):
    """Non-zeros of a ``(B, K)`` matrix as ``embedding_bag`` takes them: column of
    every non-zero (row-major order), where each row's run starts, the values."""

    columns: Tensor
    offsets: Tensor
    values: Tensor


def pack_rows(z: Tensor) -> Tensor | BagRows | None:
    """The non-zeros of ``z`` ``(B, K)`` when it is sparse enough for a sparse
    product to pay (see ``SPARSE_BELOW``): :class:`BagRows` in float32, a CSR
    tensor in float64; ``z`` itself otherwise, and ``None`` when ``z`` is all
    zeros (its products are then zero). CPU only: on a GPU the dense product is
    fast and the count would cost a host sync."""
    below = SPARSE_BELOW.get(z.dtype, 0.0)
    if z.device.type != "cpu" or below <= 0 or not z.is_contiguous():
        return z
    n_rows, k = z.shape
    # The index bookkeeping runs in NumPy on a zero-copy view: its comparison,
    # popcount and flatnonzero on a boolean mask are 3-4x faster than
    # torch.count_nonzero + torch.nonzero on CPU, and here they cost as much as
    # the sparse product itself.
    values = z.numpy().reshape(-1)
    mask = values != 0
    nnz = int(np.count_nonzero(mask))
    if nnz == 0:
        return None
    if nnz >= below * values.size:
        return z
    flat = np.flatnonzero(mask)  # row-major order is CSR order
    starts = np.searchsorted(flat, np.arange(0, values.size + 1, k))  # entries before each row start
    columns, nonzero = torch.from_numpy(flat % k), torch.from_numpy(values[flat])
    if z.dtype == torch.float32:
        return BagRows(columns, torch.from_numpy(starts[:-1]), nonzero)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(starts), columns, nonzero, (n_rows, k),
                                       check_invariants=False)


def addmm_rows(bias: Tensor, z: Tensor, matrix: Tensor, *, beta: float = 1.0, alpha: float = 1.0,
               out: Tensor | None = None) -> Tensor:
    """``beta bias + alpha z matrix`` for code rows ``z`` ``(B, K)`` and ``matrix``
    ``(K, N)``, multiplying only the non-zeros of ``z`` when it is sparse
    (:func:`pack_rows`). ``out`` (``(B, N)``, not aliasing ``z``) receives it."""
    packed = pack_rows(z)
    if packed is None:
        return torch.mul(bias, beta, out=out) if out is not None else bias * beta
    if isinstance(packed, BagRows):
        weights = packed.values if alpha == 1.0 else packed.values * alpha
        product = torch.nn.functional.embedding_bag(packed.columns, matrix, packed.offsets, mode="sum",
                                                    per_sample_weights=weights)
        return torch.add(product, bias, alpha=beta, out=product if out is None else out)
    return torch.addmm(bias, packed, matrix, beta=beta, alpha=alpha, out=out)


def code_gram(dictionary: Tensor) -> Tensor | None:
    """``Phi^T Phi`` ``(K, K)`` when the products below work in code space (``K <= 2D``),
    else ``None``. Formed once per solve and shared with :func:`.core.lipschitz`."""
    d, k = dictionary.shape
    return dictionary.T @ dictionary if k <= 2 * d else None


class GradientStep:
    """``z -> z - s grad(z) = z + s Phi^T (x - Phi z)`` for code rows ``z``
    ``(B, K)``: one step of gradient descent on ``1/2 ||x - Phi z||^2``, written
    into a caller's buffer. ``None`` stands for ``z = 0`` and costs no product
    (the usual cold start).

    With ``K <= 2D`` it works in code space: ``c + z M`` with ``c = s Phi^T x``
    and ``M = I - s Phi^T Phi`` formed once."""

    def __init__(self, x: Tensor, dictionary: Tensor, s: float, gram: Tensor | None = None) -> None:
        """``gram``: :func:`code_gram` of the dictionary, if already formed."""
        d, k = dictionary.shape
        self.s = s
        self.c = torch.mm(x, dictionary).mul_(s)  # s Phi^T x, (B, K)
        self.gram = k <= 2 * d
        if self.gram:
            gram = code_gram(dictionary) if gram is None else gram
            self.m = torch.eye(k, dtype=x.dtype, device=x.device) - s * gram
        else:
            self.x, self.phi, self.phi_t = x, dictionary, dictionary.T
            self.residual = x.new_empty(x.shape)  # (B, D) buffer

    def __call__(self, z: Tensor | None, out: Tensor) -> Tensor:
        """Write the step from ``z`` into ``out`` (``(B, K)``, must not alias ``z``); returns ``out``."""
        if z is None:
            return out.copy_(self.c)
        if self.gram:
            return addmm_rows(self.c, z, self.m, out=out)
        addmm_rows(self.x, z, self.phi_t, alpha=-1.0, out=self.residual)  # x - Phi z
        return torch.addmm(z, self.residual, self.phi, alpha=self.s, out=out)


class Gradient:
    """``z -> grad f(z) = Phi^T (Phi z - x)`` for code rows ``z`` ``(B, K)``, or
    for the rows ``rows`` (an index tensor) of the batch, ``z`` then holding just
    those rows. The gradient at ``z = 0`` is ``-Phi^T x`` (:attr:`at_zero`)."""

    def __init__(self, x: Tensor, dictionary: Tensor, gram: Tensor | None = None) -> None:
        """``gram``: :func:`code_gram` of the dictionary, if already formed."""
        d, k = dictionary.shape
        self.at_zero = torch.mm(x, dictionary).neg_()  # -Phi^T x, (B, K)
        self.gram = k <= 2 * d
        if self.gram:
            self.g = code_gram(dictionary) if gram is None else gram  # (K, K)
        else:
            self.x, self.phi, self.phi_t = x, dictionary, dictionary.T

    def __call__(self, z: Tensor, rows: Tensor | None = None) -> Tensor:
        at_zero = self.at_zero if rows is None else self.at_zero[rows]
        if self.gram:
            return addmm_rows(at_zero, z, self.g)
        x = self.x if rows is None else self.x[rows]
        return addmm_rows(x, z, self.phi_t, beta=-1.0) @ self.phi  # (Phi z - x) Phi
