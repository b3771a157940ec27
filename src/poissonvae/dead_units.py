"""Dead units (P-VAE Fig. 10): which latent units carry no information, and what they do.

* :func:`dead_threshold` - the per-unit KL below which a unit is dead.
* :func:`split_by_life` - a run's dead fraction (units below ``DEAD_FLOOR``)
  and the proportion of zeros of its dead and of its alive units, from its
  ``metrics.json`` values.

A dead unit's posterior is its prior (KL ~ 0), so its samples are draws from
the learned prior: under a rectified Gaussian prior N(mu0, sigma0^2) it is zero
with probability Phi(-mu0 / sigma0), which is 1/2 only while mu0 = 0.
"""

from __future__ import annotations

import math

import numpy as np

# nats per input: a unit whose average KL is below this carries (almost) no
# information; the ref. code's P-VAE lin|lin histogram gap sits near 0.01
DEAD_FLOOR = 0.01
# ... and one above this carries information whatever the histogram looks like: a
# low-beta run can hold a cluster of 0.1-0.8-nat units beside one of 2-13 nats,
# a "gap" between two groups of informative units (quick preset, P-VAE K = 64,
# beta = 0.01). Ten times the floor.
DEAD_CEILING = 0.1
MIN_SEPARATION_DECADES = 1.0
MIN_BIMODALITY = 0.8


def dead_threshold(values, min_separation: float = MIN_SEPARATION_DECADES, min_bimodality: float = MIN_BIMODALITY,
                   floor: float = DEAD_FLOOR, ceiling: float = DEAD_CEILING) -> float:
    """The dead-neuron rule (P-VAE Fig. 10): the threshold that separates dead from alive units.

    The paper bins the per-unit KL values and cuts the histogram at the gap
    between the small values and the large ones. Here the same idea without a
    bin width, on log10 of the values (floored at 1e-12): split the sorted
    values in two where the between-group variance is largest (Otsu's rule).
    The split is a real gap only if the two groups are far apart - their means
    at least ``min_separation`` decades apart - and the split explains at least
    ``min_bimodality`` of the variance (one uniform cluster gives 0.75, one
    normal cluster 0.64, two well-separated clusters nearly 1). Then the
    threshold is the geometric midpoint between the groups' neighbouring
    values; otherwise all values form one cluster and the threshold is
    ``floor``. It is never below ``floor`` nor above ``ceiling`` (a gap between
    two clusters of informative units is not a dead group). Units above the
    threshold are alive.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
        raise ValueError("dead_threshold needs a non-empty 1-d array of finite values")
    logs = np.sort(np.log10(np.maximum(v, 1e-12)))
    n = logs.size
    total = logs.var()
    if n < 2 or total == 0:
        return floor
    i = np.arange(1, n)  # split before index i
    csum = np.cumsum(logs)[:-1]
    m0 = csum / i
    m1 = (logs.sum() - csum) / (n - i)
    between = (i / n) * (1 - i / n) * (m1 - m0) ** 2
    k = int(np.argmax(between))
    if between[k] / total < min_bimodality or m1[k] - m0[k] < min_separation:
        return floor
    return min(ceiling, max(floor, float(10 ** ((logs[k] + logs[k + 1]) / 2))))


def split_by_life(per_unit_kl, unit_zeros=None) -> dict[str, float]:
    """``dead_fraction`` (units with KL below ``DEAD_FLOOR``), and the mean proportion
    of zeros of the dead units (``dead_zeros``) and of the alive ones
    (``alive_zeros``): NaN where a group is empty or ``unit_zeros`` (per-unit
    proportions of zeros) is not given.

    The fixed floor, not :func:`dead_threshold`'s gap: one rule for every run of
    a sweep's beta grid, so that dead fractions compare across beta.
    """
    kl = np.asarray(per_unit_kl, dtype=float)
    if kl.ndim != 1 or kl.size == 0 or not np.isfinite(kl).all():
        raise ValueError("split_by_life needs a non-empty 1-d array of finite per-unit KL values")
    dead = kl < DEAD_FLOOR
    out = {"dead_fraction": float(dead.mean()), "dead_zeros": math.nan, "alive_zeros": math.nan}
    if unit_zeros is not None:
        z = np.asarray(unit_zeros, dtype=float)
        if z.shape != kl.shape:
            raise ValueError(f"unit_zeros has shape {z.shape}, per_unit_kl {kl.shape}")
        if dead.any():
            out["dead_zeros"] = float(z[dead].mean())
        if (~dead).any():
            out["alive_zeros"] = float(z[~dead].mean())
    return out
