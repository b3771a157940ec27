"""Run one model-zoo experiment end to end: train its variants, write its table, figure and claims.

Outputs in ``OUT/<experiment>/``: ``<experiment>.csv`` and ``.md`` (the table,
beside the paper's numbers where it has them), the figure (PNG + PDF) and
``claims.md``, which states each of the paper's ordering claims, the
criterion used and whether it holds on these runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import analysis as A
from . import figures as F
from .plan import ZooSettings, run_variants

ZOO_FILE = "zoo.json"


def _claim(text: str, criterion: str, measured: str, holds: bool | None) -> dict:
    return {"claim": text, "criterion": criterion, "measured": measured, "holds": holds}


def _row(t: pd.DataFrame, **where) -> pd.Series | None:
    m = np.ones(len(t), bool)
    for k, v in where.items():
        m &= (t[k] == v).to_numpy()
    return t[m].iloc[0] if m.any() else None


def estimator_claims(t: pd.DataFrame) -> list[dict]:
    out = []
    for arch in t["arch"].unique():
        for fam in t["family"].unique():
            mc, st, ex = (_row(t, family=fam, arch=arch, estimator=e) for e in ("mc", "st", "exact"))
            if mc is not None and st is not None:
                gap = st["drop_pct"] - mc["drop_pct"]
                need = max(st["drop_pct_ci99"], mc["drop_pct_ci99"], 1.0)
                out.append(_claim(f"{fam} {arch}: ST clearly worse than MC (paper: P-VAE 7-12% vs 0-1%)",
                                  "mean drop(ST) - mean drop(MC) > max(1 point, both 99% CIs)",
                                  f"ST {st['drop_pct']:.2f}% vs MC {mc['drop_pct']:.2f}% (difference {gap:.2f})",
                                  bool(gap > need)))
            if mc is not None and ex is not None:
                diff = abs(ex["drop_pct"] - mc["drop_pct"])
                out.append(_claim(f"{fam} {arch}: EX close to MC (paper: within 0.7 points)",
                                  "|mean drop(EX) - mean drop(MC)| <= 1 point",
                                  f"EX {ex['drop_pct']:.2f}% vs MC {mc['drop_pct']:.2f}%", bool(diff <= 1.0)))
    return out


def active_claims(t: pd.DataFrame) -> list[dict]:
    out = []
    for arch in t["arch"].unique():
        p = _row(t, family="poisson", arch=arch)
        for other in ("gaussian", "laplace"):
            o = _row(t, family=other, arch=arch)
            if p is None or o is None:
                continue
            out.append(_claim(f"{arch}: P-VAE active fraction far above {other} (paper .98/.82 vs about .2)",
                              "P-VAE active fraction >= 2x the other's and >= 0.3 above it",
                              f"P {p['active']:.3f} vs {other} {o['active']:.3f}",
                              bool(p["active"] >= 2 * o["active"] and p["active"] >= o["active"] + 0.3)))
    return out


def temperature_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (a, e, s, tt), g in df.groupby(["arch", "estimator", "temperature_schedule", "temperature_end"], sort=True):
        rows.append({"arch": a, "estimator": e, "schedule": s, "temperature_end": tt, "n": len(g),
                     "neg_elbo": g["neg_elbo"].mean(), "neg_elbo_ci99": A.ci99(g["neg_elbo"])})
    return pd.DataFrame(rows)


def temperature_claims(t: pd.DataFrame) -> list[dict]:
    out = []
    for arch in t["arch"].unique():
        sub = t[t["arch"] == arch]
        relaxed = sub[sub["estimator"] == "mc"]
        hard = sub[sub["estimator"] == "st"]
        if len(relaxed):
            best = relaxed["neg_elbo"].min()
            low = relaxed[relaxed["temperature_end"] <= 0.1]
            if len(low):
                worst = low["neg_elbo"].max()
                out.append(_claim(f"{arch}: any T_final <= 0.1 with either schedule works well (paper Fig. 9)",
                                  "every relaxed run with T_final <= 0.1 within 2% of the best relaxed run",
                                  f"best {best:.2f}, worst with T_final <= 0.1: {worst:.2f} "
                                  f"({100 * (worst - best) / best:.2f}%)", bool(worst <= 1.02 * best)))
        lin = relaxed[relaxed["schedule"] == "linear"].set_index("temperature_end")["neg_elbo"]
        if len(hard) and len(lin):
            h = hard.set_index("temperature_end")["neg_elbo"]
            common = sorted(set(h.index) & set(lin.index))
            if common:
                worse = [t for t in common if h[t] > lin[t]]
                out.append(_claim(f"{arch}: hard forward (ST) underperforms relaxed samples (paper Fig. 9)",
                                  "ST -ELBO above relaxed (linear) at every final temperature",
                                  ", ".join(f"T={t:g}: ST {h[t]:.1f} vs {lin[t]:.1f}" for t in common),
                                  len(worse) == len(common)))
    return out


def dictionary_table(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in df[df["arch"] == "lin|lin"].sort_values("seed").groupby("family", sort=False).head(1).iterrows():
        values, what = A.unit_activity(r["run_dir"], r["family"])
        thr = A.dead_threshold(values)
        rows.append({"family": r["family"], "seed": r["seed"], "units": len(values),
                     "dead": int((values <= thr).sum()), "threshold": thr, "measure": what, "run_dir": r["run_dir"]})
    return pd.DataFrame(rows)


def sparsity_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["mse", "lifetime_sparsity", "proportion_zeros", "neg_elbo"]
    return df.groupby(["family", "arch", "beta"], sort=False)[cols].mean().reset_index()


def _write(t: pd.DataFrame, where: Path, name: str) -> list[Path]:
    csv, md = where / f"{name}.csv", where / f"{name}.md"
    t.to_csv(csv, index=False)
    md.write_text(A.markdown(t))
    return [csv, md]


def _claims_md(claims: list[dict]) -> str:
    if not claims:
        return "No claim of the paper could be checked on these runs.\n"
    mark = {True: "holds", False: "does not hold", None: "n/a"}
    return "".join(f"- **{mark[c['holds']]}**: {c['claim']}. Criterion: {c['criterion']}. Measured: {c['measured']}.\n"
                   for c in claims)


def analyse(experiment: str, df: pd.DataFrame, where: str | Path) -> tuple[pd.DataFrame, list[Path], list[dict]]:
    """Table, figure files and claims of ``experiment`` from its results ``df`` (no training)."""
    where = Path(where)
    where.mkdir(parents=True, exist_ok=True)
    if experiment == "estimators":
        table, figs = A.estimator_table(df), F.fig_estimators(df, where)
        claims = estimator_claims(table)
    elif experiment == "active":
        table, figs = A.active_table(df), F.fig_dead_neurons(df, where)
        claims = active_claims(table)
    elif experiment == "dictionaries":
        table, figs, claims = dictionary_table(df), F.fig_dictionaries(df, where), []
    elif experiment == "sparsity":
        table, figs, claims = sparsity_table(df), F.fig_sparsity(df, where), []
    elif experiment == "temperature":
        table, figs = temperature_table(df), F.fig_temperature(df, where)
        claims = temperature_claims(table)
    else:
        raise ValueError(f"unknown zoo experiment {experiment!r}")
    files = _write(table, where, experiment) + figs
    (where / "claims.md").write_text(f"# {experiment}: the paper's claims on these runs\n\n" + _claims_md(claims))
    df.to_parquet(where / "results.parquet", index=False)
    return table, files + [where / "claims.md", where / "results.parquet"], claims


def run_experiment(experiment: str, settings: ZooSettings, out: str | Path, engine: str = "local",
                   address: str | None = None, progress: bool = True):
    """Train what ``experiment`` needs (skipping finished runs) into ``out`` and analyse it."""
    out = Path(out)
    settings.validate()
    df = run_variants(experiment, settings, out, engine=engine, address=address, progress=progress)
    result = analyse(experiment, df, out / experiment)
    settings.save(out / experiment / ZOO_FILE)  # the settings that made this table
    return result
