"""Sparse-coding baselines for the P-VAE: ISTA, FISTA and LCA inference,
dictionary learning, and the amortization-gap experiments (P-VAE Fig. 5b).

Objective (P-VAE eq. (1) with a 1/2), per sample, ``x`` ``(B, D)``,
``dictionary`` ``(D, K)``, codes ``(B, K)``:
``E(z) = 1/2 ||x - Phi z||^2 + penalty ||z||_1`` - scikit-learn's
``Lasso(alpha=penalty / D, fit_intercept=False)``.
"""

from .core import METHODS, InferInfo, lipschitz, objective, soft_threshold
from .dictionary import learn_dictionary, normalize_columns, random_dictionary
from .experiments import (
    COLUMNS,
    amortization_gap,
    code_metrics,
    dictionary_from_weights,
    infer_batched,
    penalty_point,
    penalty_sweep,
)
from .figures import PAPER_BEST, best_models, fig5b
from .solvers import fista, infer, ista, lca

__all__ = [
    "METHODS",
    "InferInfo",
    "objective",
    "soft_threshold",
    "lipschitz",
    "infer",
    "ista",
    "fista",
    "lca",
    "learn_dictionary",
    "random_dictionary",
    "normalize_columns",
    "COLUMNS",
    "code_metrics",
    "infer_batched",
    "penalty_point",
    "penalty_sweep",
    "amortization_gap",
    "dictionary_from_weights",
    "PAPER_BEST",
    "fig5b",
    "best_models",
]
