"""Pieces shared by the sparse-coding solvers: the objective, thresholds, the
Lipschitz constant, input validation and the stopping rule.

Shapes throughout: ``x`` ``(B, D)`` (B samples of D pixels), ``dictionary``
(Phi) ``(D, K)`` (K columns, the basis vectors), ``codes`` ``(B, K)``.

The objective is the sparse-coding loss of P-VAE eq. (1) written with a 1/2:

    E(z) = 1/2 ||x - Phi z||^2 + penalty * ||z||_1            (per sample)

so ``penalty`` is half the ``beta`` of eq. (1) as printed (which has no 1/2);
both have the same minimiser. scikit-learn's ``Lasso`` minimises
``1/(2 n) ||y - X w||^2 + alpha ||w||_1`` with ``n = D`` rows of ``X = Phi``;
multiplying it by ``D`` gives ``E``, hence ``alpha = penalty / D``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..memory import retain_freed_memory

METHODS = ("fista", "ista", "lca")
CHECK_EVERY = 10  # iterations between evaluations of the stopping rule (each costs a host sync)


@dataclass(frozen=True)
class InferInfo:
    """What a solver run did: ``n_iter`` iterations taken; ``converged`` True when
    the stopping rule fired before ``max_iter``; ``rel_change`` the last measured
    max-over-batch relative change (NaN if never measured)."""

    n_iter: int
    converged: bool
    rel_change: float


def objective(x: Tensor, dictionary: Tensor, codes: Tensor, penalty: float) -> Tensor:
    """Per-sample sparse-coding objective ``1/2 ||x - Phi z||^2 + penalty ||z||_1``
    (P-VAE eq. (1) with a 1/2, see the module docstring); ``(B,)``."""
    residual = x - codes @ dictionary.T
    return 0.5 * (residual**2).sum(-1) + penalty * codes.abs().sum(-1)


def soft_threshold(v: Tensor, threshold: float, nonnegative: bool = False) -> Tensor:
    """Proximal operator of ``threshold * ||.||_1`` (plus the indicator of
    ``z >= 0`` when ``nonnegative``): ``sign(v) max(|v| - t, 0)`` or
    ``max(v - t, 0)``. Elementwise, any shape; returns a new tensor."""
    if nonnegative:
        return (v - threshold).clamp_(min=0.0)
    return torch.nn.functional.softshrink(v, threshold)  # one fused pass


def lipschitz(dictionary: Tensor, gram: Tensor | None = None) -> float:
    """Largest eigenvalue ``L`` of ``Phi^T Phi``: the Lipschitz constant of the
    gradient of ``1/2 ||x - Phi z||^2``. Computed on the smaller of the two Gram
    matrices (``Phi^T Phi`` and ``Phi Phi^T`` share their non-zero eigenvalues);
    ``gram``: ``Phi^T Phi`` when the caller has formed it already (used if K <= D)."""
    d, k = dictionary.shape
    if k <= d:
        gram = dictionary.T @ dictionary if gram is None else gram
    else:
        gram = dictionary @ dictionary.T
    return float(torch.linalg.eigvalsh(gram)[-1])


def validate(
    x: Tensor,
    dictionary: Tensor,
    penalty: float,
    max_iter: int,
    tol: float,
    z0: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check the common inputs; returns ``(x, dictionary, z0)`` with the dictionary
    (and ``z0``) moved to ``x``'s device and dtype. Raises ``ValueError``.

    On the CPU it also keeps freed heap memory mapped (:mod:`poissonvae.memory`):
    every iteration allocates ``(B, K)`` tensors, and without it each one is
    faulted in afresh (FISTA at K = 512, B = 1000: 15-20% of its time)."""
    if not isinstance(x, Tensor) or not isinstance(dictionary, Tensor):
        raise ValueError("x and dictionary must be torch tensors")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (B, D), got {tuple(x.shape)} (use x[None] for one sample)")
    if dictionary.ndim != 2:
        raise ValueError(f"dictionary must have shape (D, K), got {tuple(dictionary.shape)}")
    if x.shape[1] != dictionary.shape[0]:
        raise ValueError(
            f"shape mismatch: x has D={x.shape[1]} pixels but dictionary has "
            f"D={dictionary.shape[0]} rows (expected dictionary of shape (D, K))"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point (float32/float64), got {x.dtype}")
    dictionary = dictionary.to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    if not bool(torch.isfinite(dictionary).all()):
        raise ValueError("dictionary contains NaN or infinite values")
    penalty = float(penalty)
    if not penalty >= 0.0:  # also catches NaN
        raise ValueError(f"penalty must be a non-negative number, got {penalty}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not float(tol) >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if z0 is not None:
        expected = (x.shape[0], dictionary.shape[1])
        if tuple(z0.shape) != expected:
            raise ValueError(f"z0 must have shape (B, K) = {expected}, got {tuple(z0.shape)}")
        z0 = z0.to(device=x.device, dtype=x.dtype)
        if not bool(torch.isfinite(z0).all()):
            raise ValueError("z0 contains NaN or infinite values")
    if x.device.type == "cpu":
        retain_freed_memory()
    return x, dictionary, z0


def check_step(step: float, lip: float, what: str) -> float:
    """Validate a step size against the stability bound ``step < 2 / L``: beyond it
    the linear part ``I - step Phi^T Phi`` has an eigenvalue below -1 and the
    iteration diverges."""
    step = float(step)
    bound = 2.0 / max(lip, 1e-12)
    if not 0.0 < step < bound:
        raise ValueError(f"{what}={step:g} must be in (0, 2/L) = (0, {bound:g}) for stability (L={lip:g})")
    return step


def relative_change(new: Tensor, old: Tensor, eps: float = 1e-12) -> float:
    """Stopping statistic: ``max_b ||new_b - old_b|| / max(||old_b||, eps)`` over
    the batch. One host sync; callers evaluate it only every few iterations."""
    num = torch.linalg.vector_norm(new - old, dim=-1)
    den = torch.linalg.vector_norm(old, dim=-1).clamp_min(eps)
    return float((num / den).max()) if new.shape[0] > 0 else 0.0


def iterate(advance: Callable[[], None], watched: Callable[[], Tensor], max_iter: int, tol: float) -> InferInfo:
    """The stopping rule of every solver: call ``advance`` up to ``max_iter`` times;
    every ``CHECK_EVERY`` iterations (and at the last one) measure the relative
    change of ``watched()`` across the call and stop once it is below ``tol``
    (``tol = 0``: a fixed number of iterations)."""
    rel = math.nan
    for it in range(1, max_iter + 1):
        check = (tol > 0 and it % CHECK_EVERY == 0) or it == max_iter
        prev = watched().clone() if check else None
        advance()
        if prev is not None:
            rel = relative_change(watched(), prev)
            if rel < tol:
                return InferInfo(it, True, rel)
    return InferInfo(max_iter, False, rel)


def start_codes(x: Tensor, k: int, z0: Tensor | None, nonnegative: bool) -> Tensor:
    """The codes a solver starts from: zeros, or a copy of ``z0`` (clamped at 0 when ``nonnegative``)."""
    if z0 is None:
        return x.new_zeros(x.shape[0], k)
    return z0.clamp(min=0.0) if nonnegative else z0.clone()


def no_tau(tau: float | None, method: str) -> None:
    if tau is not None:
        raise ValueError(f"tau is the LCA time constant; {method} takes a step size (step) only")
