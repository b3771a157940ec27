"""Schedules of learning rate, KL weight and temperature, as functions of the iteration.

All are pure functions of ``(step, total_steps, ...)`` so a resumed run
recomputes exactly the value an uninterrupted run would have used.
"""

from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, total_steps: int, eta_min_ratio: float) -> float:
    """Multiplier of the base learning rate: linear warm-up, then cosine annealing
    to ``eta_min_ratio`` over the remaining steps (paper: cosine over all epochs
    after 5 warm-up epochs; ref. code eta_min = 1e-5)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return eta_min_ratio + (1.0 - eta_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def anneal_progress(step: int, total_steps: int, fraction: float) -> float:
    """Fraction in [0, 1] of an annealing phase that spans the first ``fraction`` of training."""
    span = fraction * total_steps
    if span <= 0:
        return 1.0
    return min(1.0, step / span)


def beta_at(step: int, total_steps: int, start: float, target: float, fraction: float) -> float:
    """KL annealing: linear from ``start`` to ``target`` over the first ``fraction``
    of iterations, then constant (ref. code for linear decoders: start 1e-4, 50%)."""
    p = anneal_progress(step, total_steps, fraction)
    return start + (target - start) * p


def temperature_at(step: int, total_steps: int, start: float, end: float, fraction: float, kind: str = "linear") -> float:
    """Relaxation temperature: ``start`` -> ``end`` over the first ``fraction`` of
    training (linear or geometric), then constant (P-VAE appendix C.3)."""
    p = anneal_progress(step, total_steps, fraction)
    if kind == "linear":
        return start + (end - start) * p
    if kind == "exponential":
        return start * (end / start) ** p
    raise ValueError(f"unknown temperature schedule {kind!r}")
