"""Validation of a stack of models: samples at temperature 0, metrics per model.

Streams the data in batches and accumulates sums, so memory stays bounded
whatever the number of models, K or validation size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import metrics as M
from .models import StackedVAE


@torch.no_grad()
def evaluate(model: StackedVAE, x: Tensor, batch_size: int = 5000, seed: int = 0) -> dict[str, list]:
    """Metrics of every model on ``x`` ``(N, D)``; each value is a per-model list.

    ``z`` is sampled exactly (temperature 0) from the posterior (eqs. 22-23).
    Keys: ``mse``, ``r2``, ``metabolic_cost``, ``proportion_zeros``,
    ``overall_performance``, ``neg_elbo`` (``recon + kl``, beta = 1), ``recon``,
    ``kl``, ``lifetime_sparsity`` (mean over units that fire), ``per_unit_kl``,
    ``unit_lifetime_sparsity`` and ``unit_proportion_zeros`` (lists of K).

    ``recon`` is E_q ||x - x_hat||^2 averaged over ``x``: in closed form
    (eqs. 17, 21) for a linear decoder (lin|lin, conv|lin); for a nonlinear
    decoder (conv|conv), which has no closed form, the one-sample Monte Carlo
    estimate ||x - dec(z)||^2 from the same exact (temperature-0) samples ``z``
    as the other metrics, an unbiased estimate, so there ``recon`` equals ``mse``.
    """
    model.eval()
    device = next(model.parameters()).device
    x = x.to(device, torch.float32)
    n = x.shape[0]
    if n < 2:
        raise ValueError("evaluation needs at least 2 samples")
    gen = torch.Generator(device=device).manual_seed(seed)
    Mn, K = model.n_models, model.cfg.K
    sums = {k: torch.zeros(Mn, dtype=torch.float64, device=device) for k in ("sq_err", "z", "zeros", "recon", "kl")}
    unit_kl = torch.zeros(Mn, K, dtype=torch.float64, device=device)
    s1 = torch.zeros_like(unit_kl)
    s2 = torch.zeros_like(unit_kl)
    unit_zeros = torch.zeros_like(unit_kl)
    for start in range(0, n, batch_size):
        xb = x[start : start + batch_size]
        post = model.encode(xb)
        z = model.family.sample(post, generator=gen)  # (M, B, K)
        x_hat = model.decode(z)
        kl = model.family.kl(post)
        mean, var = model.family.moments(post)
        b = xb.shape[0]
        sums["sq_err"] += M.mse(xb, x_hat).double() * b
        sums["z"] += M.metabolic_cost(z).double() * b
        sums["zeros"] += M.proportion_zeros(z).double() * b
        if model.linear_decoder:  # closed form, eqs. (17), (21)
            sums["recon"] += model.family.linear_reconstruction(xb, model.dictionary, mean, var).double().sum(-1)
        else:  # one exact sample per input: unbiased, no closed form exists
            sums["recon"] += ((xb - x_hat) ** 2).double().sum((-2, -1))
        sums["kl"] += kl.double().sum((-2, -1))
        unit_kl += kl.double().sum(-2)
        s1 += z.double().abs().sum(-2)  # magnitudes: see metrics.lifetime_sparsity
        s2 += (z.double() ** 2).sum(-2)
        unit_zeros += (z == 0).sum(-2)
    ss_tot = ((x.double() - x.double().mean(0)) ** 2).sum()
    mse = sums["sq_err"] / n
    r2 = 1.0 - mse * n / ss_tot
    pz = sums["zeros"] / n
    life = M.lifetime_sparsity_from_sums(s1, s2, n)
    result = {
        "mse": mse,
        "r2": r2,
        "metabolic_cost": sums["z"] / n,
        "proportion_zeros": pz,
        "overall_performance": M.overall_performance(r2, pz),
        "recon": sums["recon"] / n,
        "kl": sums["kl"] / n,
        "lifetime_sparsity": torch.nanmean(life, dim=-1),
    }
    result["neg_elbo"] = result["recon"] + result["kl"]
    out = {k: v.cpu().tolist() for k, v in result.items()}
    out["per_unit_kl"] = (unit_kl / n).cpu().tolist()
    out["unit_lifetime_sparsity"] = life.cpu().tolist()
    out["unit_proportion_zeros"] = (unit_zeros / n).cpu().tolist()
    return out
