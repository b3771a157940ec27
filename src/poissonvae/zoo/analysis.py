"""Tables of the model-zoo experiments, computed from results tables and saved runs only.

* :func:`estimator_table` - P-VAE Table 2: percent drop of the validation
  negative ELBO against the best run of the same family and encoder.
* :func:`unit_activity` and :func:`active_table` - P-VAE Table 3 / Fig. 10:
  the proportion of active units by the dead-neuron rule
  (:func:`poissonvae.dead_units.dead_threshold`, re-exported here).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..checkpoint import read_weights
from ..dead_units import dead_threshold
from ..families import FAMILIES
from ..runs import METRICS, WEIGHTS

# P-VAE paper, van Hateren 16x16, K = 512, n = 5 seeds (REFERENCE.md). Keys: (family, arch, estimator).
PAPER_NEG_ELBO = {  # Table 5
    ("poisson", "lin|lin", "exact"): 168.0, ("poisson", "conv|lin", "exact"): 162.4,
    ("poisson", "lin|lin", "mc"): 167.2, ("poisson", "conv|lin", "mc"): 163.4,
    ("poisson", "lin|lin", "st"): 179.3, ("poisson", "conv|lin", "st"): 179.4,
    ("gaussian", "lin|lin", "exact"): 160.3, ("gaussian", "conv|lin", "exact"): 154.4,
    ("gaussian", "lin|lin", "mc"): 160.3, ("gaussian", "conv|lin", "mc"): 154.4,
    ("categorical", "lin|lin", "exact"): 174.9, ("categorical", "conv|lin", "exact"): 186.3,
    ("categorical", "lin|lin", "mc"): 170.5, ("categorical", "conv|lin", "mc"): 171.9,
    ("categorical", "lin|lin", "st"): 174.2, ("categorical", "conv|lin", "st"): 181.1,
    ("laplace", "lin|lin", "exact"): 167.3, ("laplace", "conv|lin", "exact"): 159.0,
    ("laplace", "lin|lin", "mc"): 167.3, ("laplace", "conv|lin", "mc"): 159.2,
}
PAPER_DROP = {  # Table 2, percent
    ("poisson", "lin|lin", "exact"): 0.6, ("poisson", "conv|lin", "exact"): 0.1,
    ("poisson", "lin|lin", "mc"): 0.0, ("poisson", "conv|lin", "mc"): 0.7,
    ("poisson", "lin|lin", "st"): 7.3, ("poisson", "conv|lin", "st"): 10.5,
    ("gaussian", "lin|lin", "exact"): 0.1, ("gaussian", "conv|lin", "exact"): 0.0,
    ("gaussian", "lin|lin", "mc"): 0.1, ("gaussian", "conv|lin", "mc"): 0.0,
}
PAPER_ACTIVE = {  # Table 3
    ("poisson", "lin|lin"): 0.984, ("poisson", "conv|lin"): 0.819,
    ("laplace", "lin|lin"): 0.188, ("laplace", "conv|lin"): 0.222,
    ("gaussian", "lin|lin"): 0.218, ("gaussian", "conv|lin"): 0.246,
}


def ci99(values) -> float:
    """Half-width of the 99% confidence interval of the mean (Student t), as the paper reports; 0 for n < 2."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return 0.0
    from scipy.stats import t

    return float(t.ppf(0.995, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def _need(df: pd.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"results lack columns {missing}; have {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("results have no rows (no finished runs)")


def percent_drop(df: pd.DataFrame) -> pd.Series:
    """Per run: 100 (L - L_best) / L_best, L the validation negative ELBO and L_best
    the single best run of the same family and encoder across estimators and seeds (Table 2)."""
    _need(df, ["family", "arch", "neg_elbo"])
    best = df.groupby(["family", "arch"])["neg_elbo"].transform("min")
    return 100.0 * (df["neg_elbo"] - best) / best


def estimator_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (family, arch, estimator): mean and 99% CI of the negative ELBO and
    of its percent drop, beside the paper's values (NaN where the paper has none)."""
    _need(df, ["family", "arch", "estimator", "neg_elbo", "seed"])
    d = df.assign(drop=percent_drop(df))
    rows = []
    for (f, a, e), g in d.groupby(["family", "arch", "estimator"], sort=False):
        rows.append({"family": f, "arch": a, "estimator": e, "n": len(g),
                     "neg_elbo": g["neg_elbo"].mean(), "neg_elbo_ci99": ci99(g["neg_elbo"]),
                     "drop_pct": g["drop"].mean(), "drop_pct_ci99": ci99(g["drop"]),
                     "paper_neg_elbo": PAPER_NEG_ELBO.get((f, a, e), math.nan),
                     "paper_drop_pct": PAPER_DROP.get((f, a, e), math.nan)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------- dead neurons
def unit_activity(run_dir: str | Path, family: str) -> tuple[np.ndarray, str]:
    """The per-unit quantity the dead-neuron rule looks at, and its name.

    Per-unit KL averaged over the validation set (``metrics.json``), except for
    families whose units are one coupled variable (categorical: one KL for the
    whole one-hot vector), where, as in the paper, the norms of the decoder's
    columns are used instead.
    """
    run_dir = Path(run_dir)
    if getattr(FAMILIES.get(family), "coupled_units", False):
        tensors, _ = read_weights(run_dir / WEIGHTS)
        return tensors["dictionary"][0].norm(dim=0).numpy().astype(float), "decoder column norm"
    metrics = json.loads((run_dir / METRICS).read_text())
    return np.asarray(metrics["per_unit_kl"], dtype=float), "per-unit KL (nats)"


def active_fraction(values, **kw) -> float:
    v = np.asarray(values, dtype=float)
    return float((v > dead_threshold(v, **kw)).mean())


def active_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (family, arch): proportion of active units (mean and 99% CI over
    seeds) by :func:`dead_threshold`, beside the paper's Table 3."""
    _need(df, ["family", "arch", "run_dir", "seed"])
    fracs = [active_fraction(unit_activity(r, f)[0]) for r, f in zip(df["run_dir"], df["family"])]
    d = df.assign(active=fracs)
    rows = []
    for (f, a), g in d.groupby(["family", "arch"], sort=False):
        rows.append({"family": f, "arch": a, "n": len(g), "active": g["active"].mean(), "active_ci99": ci99(g["active"]),
                     "paper_active": PAPER_ACTIVE.get((f, a), math.nan)})
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame, digits: int = 4) -> str:
    """A pipe table (no extra dependency): numbers rounded, NaN shown as a dash."""
    def cell(x):
        if isinstance(x, float):
            return "-" if math.isnan(x) else f"{x:.{digits}g}"
        return str(x)

    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(cell(x) for x in row) + " |\n" for row in df.itertuples(index=False))
