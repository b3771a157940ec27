"""Sparse-coding experiments of P-VAE Fig. 5b, as library functions.

* :func:`penalty_sweep` - learn a dictionary per (method, penalty) on training
  patches, infer codes of validation patches with the same method, measure.
* :func:`amortization_gap` - run iterative inference (LCA by default) on a
  GIVEN dictionary, e.g. a trained P-VAE decoder, at several penalties: how much
  better the same basis reconstructs when the codes are optimised per input
  instead of predicted by an encoder.

Both return one row per run with columns ``method, penalty, mse,
lifetime_sparsity, proportion_zeros, objective, active_units``, measured with
:mod:`poissonvae.metrics` so they compare directly with the VAE evaluations:
``mse`` squared error summed over pixels, mean over samples; lifetime
sparsity (P-VAE eq. (5)) averaged over the units that fire (nanmean).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .. import metrics
from ..checkpoint import read_weights
from .core import objective
from .dictionary import learn_dictionary, normalize_columns
from .solvers import infer

COLUMNS = ["method", "penalty", "mse", "lifetime_sparsity", "proportion_zeros", "objective", "active_units"]


def code_metrics(x: Tensor, dictionary: Tensor, codes: Tensor, penalty: float) -> dict[str, float]:
    """Metrics of codes ``(N, K)`` for ``x`` ``(N, D)`` under ``dictionary`` ``(D, K)``:
    ``mse`` (metrics.mse of ``x`` and ``codes Phi^T``), ``lifetime_sparsity``
    (nanmean over units of metrics.lifetime_sparsity; silent units are NaN),
    ``proportion_zeros`` (metrics.proportion_zeros), ``objective`` (mean per-sample
    ``1/2 ||x - Phi z||^2 + penalty ||z||_1``), ``active_units`` (fraction of
    units non-zero for at least one input)."""
    x_hat = codes @ dictionary.T
    life = metrics.lifetime_sparsity(codes)
    return {
        "mse": float(metrics.mse(x, x_hat)),
        "lifetime_sparsity": float(torch.nanmean(life)) if bool(torch.isfinite(life).any()) else float("nan"),
        "proportion_zeros": float(metrics.proportion_zeros(codes)),
        "objective": float(objective(x, dictionary, codes, penalty).mean()),
        "active_units": float((codes != 0).any(0).float().mean()),
    }


def infer_batched(x: Tensor, dictionary: Tensor, penalty: float, batch_size: int = 4096, **kwargs) -> Tensor:
    """:func:`~.solvers.infer` over ``x`` ``(N, D)`` in chunks of ``batch_size``
    rows (bounded memory); codes ``(N, K)``. ``kwargs`` go to ``infer``."""
    parts = [infer(x[i:i + batch_size], dictionary, penalty, **kwargs) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts) if parts else x.new_zeros(0, dictionary.shape[1])


def penalty_point(x_train: Tensor | np.ndarray, x_val: Tensor | np.ndarray, K: int, penalty: float,
                  method: str = "lca", nonnegative: bool = True, epochs: int = 10, batch_size: int = 256,
                  lr: float = 0.1, seed: int = 0, max_iter: int = 200, tol: float = 1e-4,
                  eval_max_iter: int | None = None, progress: bool = False,
                  on_epoch: Callable[[dict[str, float]], None] | None = None,
                  scale_lr: bool = False, compile: bool = False) -> tuple[dict, Tensor]:
    """One point of P-VAE Fig. 5b's sparse-coding curves: :func:`learn_dictionary`
    on ``x_train`` ``(N, D)`` with ``method`` at ``penalty`` (``epochs``,
    ``batch_size``, ``lr``, ``seed``, inference capped at ``max_iter``/``tol``),
    then codes of ``x_val`` ``(M, D)`` by the same method (``eval_max_iter``
    iterations, default ``max_iter``) and :func:`code_metrics`. ``on_epoch`` and
    ``scale_lr`` are passed to :func:`learn_dictionary`; ``compile`` (FISTA only)
    to every inference.

    Returns ``(row, dictionary)``: a dict with :data:`COLUMNS` and the learned
    ``(D, K)`` dictionary."""
    x_train, x_val = torch.as_tensor(x_train), torch.as_tensor(x_val)
    phi, _ = learn_dictionary(x_train, K, penalty, method=method, nonnegative=nonnegative, epochs=epochs,
                              batch_size=batch_size, lr=lr, seed=seed, progress=progress, max_iter=max_iter,
                              tol=tol, on_epoch=on_epoch, scale_lr=scale_lr, compile=compile)
    phi = phi.to(x_val.dtype)
    codes = infer_batched(x_val, phi, penalty, method=method, nonnegative=nonnegative,
                          max_iter=eval_max_iter or max_iter, tol=tol, compile=compile)
    return {"method": method, "penalty": float(penalty), **code_metrics(x_val, phi, codes, penalty)}, phi


def penalty_sweep(x_train: Tensor | np.ndarray, x_val: Tensor | np.ndarray, K: int, penalties: Sequence[float],
                  methods: Sequence[str] = ("lca", "ista"), nonnegative: bool = True, epochs: int = 10,
                  batch_size: int = 256, lr: float = 0.1, seed: int = 0, max_iter: int = 200, tol: float = 1e-4,
                  eval_max_iter: int | None = None, progress: bool = False, return_dictionaries: bool = False,
                  scale_lr: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, dict[tuple[str, float], Tensor]]:
    """:func:`penalty_point` for each method and penalty (same arguments): a
    dictionary learned per (method, penalty), measured on ``x_val``.

    Returns a DataFrame with :data:`COLUMNS`; with ``return_dictionaries`` also
    ``{(method, penalty): dictionary (D, K)}``."""
    rows, dictionaries = [], {}
    for method in methods:
        for penalty in penalties:
            row, phi = penalty_point(x_train, x_val, K, penalty, method=method, nonnegative=nonnegative,
                                     epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, max_iter=max_iter,
                                     tol=tol, eval_max_iter=eval_max_iter, progress=progress, scale_lr=scale_lr)
            rows.append(row)
            dictionaries[(method, float(penalty))] = phi
    df = pd.DataFrame(rows, columns=COLUMNS)
    return (df, dictionaries) if return_dictionaries else df


def amortization_gap(dictionary: Tensor, x_val: Tensor | np.ndarray, penalties: Sequence[float],
                     method: str = "lca", nonnegative: bool = True, normalize: bool = True, max_iter: int = 1000,
                     tol: float = 1e-5, label: str | None = None, batch_size: int = 4096) -> pd.DataFrame:
    """Iterative inference on a fixed ``dictionary`` ``(D, K)`` (e.g. a trained
    P-VAE's decoder, see :func:`dictionary_from_weights`) for ``x_val`` ``(N, D)``
    at each penalty; one row per penalty with :data:`COLUMNS`, ``method`` set to
    ``label`` (default ``f"{method} on dictionary"``).

    ``normalize`` rescales the columns to unit norm first. A VAE decoder's
    columns have arbitrary norms, and one L1 penalty then taxes units unequally;
    with unit columns it acts as in the LCA/ISTA dictionaries learned here. The
    span, hence the attainable reconstructions, is unchanged, and lifetime
    sparsity is invariant to a unit's scale."""
    x_val = torch.as_tensor(x_val)
    phi = dictionary.detach().to(dtype=x_val.dtype, device=x_val.device)
    if normalize:
        phi = normalize_columns(phi)
    name = label or f"{method} on dictionary"
    rows = []
    for penalty in penalties:
        codes = infer_batched(x_val, phi, penalty, batch_size=batch_size, method=method,
                              nonnegative=nonnegative, max_iter=max_iter, tol=tol)
        rows.append({"method": name, "penalty": float(penalty), **code_metrics(x_val, phi, codes, penalty)})
    return pd.DataFrame(rows, columns=COLUMNS)


def dictionary_from_weights(path: str | Path, index: int = 0) -> Tensor:
    """The decoder ``(D, K)`` of model ``index`` in a weights file written by
    :func:`poissonvae.checkpoint.save_weights` (``dictionary`` is ``(M, D, K)``)."""
    tensors, _ = read_weights(path)
    if "dictionary" not in tensors:
        raise ValueError(f"{path}: no 'dictionary' tensor (found {', '.join(sorted(tensors))})")
    phi = tensors["dictionary"]
    if phi.ndim == 3:
        if not 0 <= index < phi.shape[0]:
            raise ValueError(f"{path}: model index {index} out of range for {phi.shape[0]} model(s)")
        phi = phi[index]
    return phi.float()
