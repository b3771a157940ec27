"""Dictionary learning for sparse coding (Olshausen & Field 1996 style).

Alternates, on mini-batches, (1) inference of the codes with the dictionary
fixed (a solver from :mod:`.solvers`) and (2) one gradient step on the
dictionary with the codes fixed, on the reconstruction term of P-VAE eq. (1)
``1/2 ||x - Phi z||^2`` averaged over the batch; then (3) renormalises every
column to unit norm. Step (3) is needed because the L1 penalty alone could be
driven to zero by shrinking codes and growing columns.

The gradient of step (2), ``(x - Phi z)^T z / B``, scales with the codes, and
they shrink as the penalty grows: one learning rate is then too large for small
penalties (the dictionary thrashes) and too small for large ones. With
``scale_lr`` the step is divided by the batch's mean code energy
``mean_j sum_b z_bj^2 / B`` (a scalar, so the direction is the gradient's), which
makes one ``lr`` work across a penalty sweep.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .core import objective
from .solvers import infer


def random_dictionary(d: int, k: int, seed: int = 0, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
    """``(d, k)`` dictionary of Gaussian columns scaled to unit norm (seeded)."""
    g = torch.Generator().manual_seed(int(seed))
    phi = torch.randn(d, k, generator=g, dtype=torch.float64)
    return normalize_columns(phi).to(dtype=dtype, device=device)


def normalize_columns(dictionary: Tensor, eps: float = 1e-12) -> Tensor:
    """Columns of ``dictionary`` ``(D, K)`` scaled to unit Euclidean norm."""
    return dictionary / torch.linalg.vector_norm(dictionary, dim=0, keepdim=True).clamp_min(eps)


def learn_dictionary(x: Tensor | np.ndarray, K: int, penalty: float, method: str = "fista",
                     nonnegative: bool = True, epochs: int = 10, batch_size: int = 256, lr: float = 0.1,
                     seed: int = 0, progress: bool = False, max_iter: int = 200, tol: float = 1e-4,
                     init: Tensor | None = None, on_epoch: Callable[[dict[str, float]], None] | None = None,
                     scale_lr: bool = False, compile: bool = False) -> tuple[Tensor, list[dict[str, float]]]:
    """Learn a ``(D, K)`` unit-norm dictionary for ``x`` ``(N, D)``.

    Each batch: codes ``z = infer(x_b, Phi, penalty, method, nonnegative,
    max_iter, tol)``; ``Phi <- Phi + lr * (x_b - z Phi^T)^T z / B`` (minus the
    gradient of the batch mean of ``1/2 ||x - Phi z||^2``; with ``scale_lr``
    divided by ``mean_j sum_b z_bj^2 / B``, see the module docstring); columns
    renormalised.
    Initial columns are random unit vectors from ``seed`` (or ``init``); batches
    are shuffled with the same seed. Runs on ``x``'s device and dtype.
    ``compile`` (FISTA only): :func:`~.solvers.infer`'s fused kernels.

    Returns ``(dictionary, history)``; ``history`` has one dict per epoch with
    ``epoch``, ``mse`` (squared error summed over pixels, mean over samples),
    ``objective`` (mean per-sample E), ``proportion_zeros`` and ``mean_iter``
    (solver iterations per batch), all averaged over that epoch's batches.
    ``on_epoch``, if given, is called with each epoch's history entry as soon
    as the epoch ends (a progress bar's hook).
    """
    x = torch.as_tensor(x)
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point (N, D) tensor, got {tuple(x.shape)} {x.dtype}")
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be a positive integer, got {K!r}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"epochs, batch_size and lr must be positive, got {epochs}, {batch_size}, {lr}")
    n, d = x.shape
    if init is None:
        phi = random_dictionary(d, K, seed, dtype=x.dtype, device=x.device)
    else:
        if tuple(init.shape) != (d, K):
            raise ValueError(f"init must have shape (D, K) = {(d, K)}, got {tuple(init.shape)}")
        phi = normalize_columns(init.to(dtype=x.dtype, device=x.device))
    g = torch.Generator().manual_seed(int(seed) + 1)
    history: list[dict[str, float]] = []
    epoch_iter = range(1, epochs + 1)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc=f"dictionary ({method}, penalty={penalty:g})")
    for epoch in epoch_iter:
        order = torch.randperm(n, generator=g).to(x.device)
        sums = {"mse": 0.0, "objective": 0.0, "proportion_zeros": 0.0, "mean_iter": 0.0}
        n_batches = 0
        for start in range(0, n, batch_size):
            xb = x[order[start:start + batch_size]]
            z, info = infer(xb, phi, penalty, method=method, nonnegative=nonnegative, max_iter=max_iter,
                            tol=tol, return_info=True, compile=compile)
            residual = xb - z @ phi.T
            # Stats for this batch use the dictionary the codes were inferred with.
            sums["mse"] += float((residual**2).sum(-1).mean())
            sums["objective"] += float(objective(xb, phi, z, penalty).mean())
            sums["proportion_zeros"] += float((z == 0).to(x.dtype).mean())
            sums["mean_iter"] += info.n_iter
            n_batches += 1
            # d/dPhi of mean_b 1/2 ||x_b - Phi z_b||^2 is -(residual^T z) / B.
            scale = xb.shape[0]
            if scale_lr:  # B * mean_j sum_b z_bj^2 / B: the B cancels
                scale = float((z * z).sum(0).mean().clamp_min(torch.finfo(z.dtype).tiny))
            phi = normalize_columns(phi + (lr / scale) * (residual.T @ z))
        history.append({"epoch": float(epoch), **{k: v / n_batches for k, v in sums.items()}})
        if on_epoch is not None:
            on_epoch(history[-1])
    return phi, history
