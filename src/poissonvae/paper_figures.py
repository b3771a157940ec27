"""The metabolic-cost paper's figures (Figs. 1-7), drawn from a finished sweep.

Figs. 1-3 are analytic (no data). Figs. 4-7 and the dictionaries read only
``SWEEP/results.parquet`` and, for the dictionaries, each run's
``weights.safetensors`` and ``metrics.json``: nothing is retrained. Metrics are
averaged over seeds for each (family, K, beta). Every figure is written as PNG
and PDF; each function returns the paths it wrote.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from .checkpoint import read_weights  # noqa: E402
from .figures import plot_dictionary  # noqa: E402
from .functional import relu_moments  # noqa: E402

RESULTS = "results.parquet"
FIGURES = "figures"
REQUIRED_COLUMNS = ("family", "K", "beta", "seed", "run_dir", "metabolic_cost", "proportion_zeros", "r2",
                    "overall_performance")
FAMILY_ORDER = ("poisson", "gaussian_relu", "gaussian", "laplace", "categorical", "gaussian_exp")
LABELS = {"poisson": r"$\mathcal{P}$-VAE", "gaussian_relu": r"$\mathcal{G}_\mathrm{relu}$-VAE",
          "gaussian": r"$\mathcal{G}$-VAE", "laplace": r"$\mathcal{L}$-VAE", "categorical": r"$\mathcal{C}$-VAE",
          "gaussian_exp": r"$\mathcal{G}_\mathrm{exp}$-VAE"}
COLORS = {"poisson": "tab:blue", "gaussian_relu": "tab:orange", "gaussian": "tab:green", "laplace": "tab:purple",
          "categorical": "tab:brown", "gaussian_exp": "tab:pink"}
BETA = r"KL weight $\beta$"


# ------------------------------------------------------------------ shared helpers
def label(family: str) -> str:
    return LABELS.get(family, family)


def _color(family: str) -> str:
    return COLORS.get(family, "tab:gray")


def _save(fig, out: str | Path, name: str) -> list[Path]:
    """Write ``fig`` as ``<out>/<name>.png`` and ``.pdf`` and close it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend is a warning
        ax.legend(**kw)


def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    """``SWEEP/results.parquet``, checked to exist, be non-empty and hold the needed columns."""
    path = Path(sweep_dir) / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the sweep first (it writes one row per finished run)")
    df = pd.read_parquet(path)
    check_results(df, path)
    return df


def check_results(df: pd.DataFrame, where: str | Path = "results table") -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where} lacks required columns {missing}; it has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{where} has no rows (no finished runs)")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of every numeric metric per (family, K, beta), plus ``n_seeds``."""
    keys = ["family", "K", "beta"]
    numeric = [c for c in df.columns if c not in keys and c != "seed" and pd.api.types.is_numeric_dtype(df[c])]
    g = df.groupby(keys, sort=True)
    out = g[numeric].mean()
    out["n_seeds"] = g["seed"].nunique()
    return out.reset_index()


def families(df: pd.DataFrame) -> list[str]:
    present = set(df["family"])
    return [f for f in FAMILY_ORDER if f in present] + sorted(present - set(FAMILY_ORDER))


def pick_K(df: pd.DataFrame, K: int) -> tuple[int, str]:
    """``K`` if some run has it, else the largest K present, with a note saying so."""
    Ks = sorted(int(k) for k in df["K"].unique())
    if K in Ks:
        return K, ""
    return Ks[-1], f" (K={K} not in sweep: largest K)"


def _k_colors(Ks) -> dict[int, tuple]:
    Ks = sorted(int(k) for k in set(Ks))
    cmap = plt.get_cmap("viridis")
    return {k: cmap(i / max(len(Ks) - 1, 1) * 0.9) for i, k in enumerate(Ks)}


def _per_K_panels(df: pd.DataFrame, column: str, ylabel: str, logy: bool, title: str):
    """One panel per family, one line per K of ``column`` vs beta (Figs. 4 and 5)."""
    s = summarize(df)
    fams = families(s)
    colors = _k_colors(s["K"])
    fig, axes = plt.subplots(1, len(fams), figsize=(4.8 * len(fams), 3.8), sharey=True, squeeze=False)
    for ax, fam in zip(axes[0], fams):
        sub = s[s["family"] == fam]
        for K, line in sub.groupby("K"):
            line = line.sort_values("beta")
            if logy:
                line = line[line[column] > 0]  # zero cost cannot show on a log axis
            ax.plot(line["beta"], line[column], "o-", ms=4, color=colors[int(K)], label=f"K = {int(K)}")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(BETA)
        ax.set_title(label(fam))
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    _legend(axes[0][-1], fontsize=8, title="latent size", title_fontsize=8)
    fig.suptitle(title)
    return fig


# ------------------------------------------------------------------ analytic figures
def fig1_kl_nonlinearities(out: str | Path) -> list[Path]:
    """Fig. 1: KL nonlinearities f (eq. 8) and g (eq. 9) in the log-residuals, with
    their common quadratic approximation x^2 / 2 (eqs. 10-11; appendix eqs. 32-41)."""
    x = np.linspace(-3, 3, 401)
    f = x * np.exp(x) - np.exp(x) + 1  # f(e^u), u = log delta_lambda
    g = np.exp(x) - 1 - x  # g(e^v), v = log delta_sigma^2
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    panels = [(f, r"$f(e^{u}) = u e^{u} - e^{u} + 1$", r"$u^2/2$", r"$u = \log \delta\lambda$", label("poisson")),
              (g, r"$g(e^{v}) = e^{v} - 1 - v$", r"$v^2/2$", r"$v = \log \delta\sigma^2$", r"$\mathcal{G}$-VAE")]
    for ax, (y, name, quad, xl, title) in zip(axes, panels):
        ax.plot(x, y, color="k", lw=2, label=name + " (exact)")
        ax.plot(x, x**2 / 2, "k--", lw=1.2, label=quad + " (quadratic)")
        ax.set_xlabel(xl)
        ax.set_title(title)
        ax.set_ylim(0, 6)
        ax.axvline(0, color="gray", lw=0.5)
        ax.legend(fontsize=8, loc="upper center")
    axes[0].set_ylabel("per-dimension KL nonlinearity")
    return _save(fig, out, "fig1_kl_nonlinearities")


def fig2_posteriors(out: str | Path) -> list[Path]:
    """Fig. 2: one latent's posterior. Left Poisson(2) pmf; right relu of N(0, 1):
    continuous part on z > 0 plus a point mass P(h = 0) = Phi(0) = 1/2."""
    k = np.arange(11)
    rate = 2.0
    pmf = np.exp(k * math.log(rate) - rate - np.array([math.lgamma(i + 1) for i in k]))
    z = np.linspace(-3.5, 3.5, 401)
    dens = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.bar(k, pmf, color=_color("poisson"), width=0.7, label=r"Pois$(z;\,\lambda=2)$")
    a.set_xticks(k)
    a.set_xlabel(r"spike count $z$")
    a.set_ylabel(r"$q(z \mid x)$")
    a.set_title(label("poisson") + " posterior")
    a.legend(fontsize=8)
    b.plot(z, dens, "--", color="gray", label=r"$\mathcal{N}(z;\,\mu=0,\sigma=1)$")
    pos = z > 0
    b.plot(z[pos], dens[pos], color=_color("gaussian_relu"), lw=2, label=r"relu$(z)$: density on $h>0$")
    b.vlines(0, 0, 0.5, color=_color("gaussian_relu"), lw=2)
    b.plot([0], [0.5], "o", color=_color("gaussian_relu"), ms=7, label=r"point mass $P(h=0)=0.5$")
    b.set_xlabel(r"$z$, $h = \mathrm{relu}(z)$")
    b.set_ylabel("density / probability")
    b.set_title(label("gaussian_relu") + " posterior (unnormalised)")
    b.set_ylim(0, 0.85)  # room for the legend above the point mass
    b.legend(fontsize=8, loc="upper right")
    return _save(fig, out, "fig2_posteriors")


def fig3_relu_moments(out: str | Path) -> list[Path]:
    """Fig. 3: mean (eq. 18) and variance (eq. 19) of relu(z), z ~ N(mu, sigma^2)."""
    mu = torch.linspace(-4, 4, 401, dtype=torch.float64)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    for sigma, c in zip((0.5, 1.0, 2.0), ("tab:blue", "tab:orange", "tab:green")):
        m, v = relu_moments(mu, torch.full_like(mu, sigma))
        a.plot(mu, m, color=c, label=rf"$\sigma = {sigma:g}$")
        b.plot(mu, v, color=c, label=rf"$\sigma = {sigma:g}$")
    a.plot(mu, torch.nn.functional.softplus(mu), "k--", lw=1, label="softplus$(\\mu)$")
    a.set_ylabel(r"mean $m = \mathbb{E}[\mathrm{relu}(z)]$")
    b.set_ylabel(r"variance $v = \mathrm{Var}[\mathrm{relu}(z)]$")
    for ax, t in ((a, "mean (eq. 18)"), (b, "variance (eq. 19)")):
        ax.set_xlabel(r"$\mu$")
        ax.set_title(t)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out, "fig3_relu_moments")


# ------------------------------------------------------------------ sweep figures
def fig4_metabolic_cost(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """Fig. 4: metabolic cost (eq. 22, mean activity) vs beta, per K, log-log."""
    fig = _per_K_panels(df, "metabolic_cost", "metabolic cost MC (mean activity, eq. 22)", True,
                        "Metabolic cost vs KL weight")
    return _save(fig, out, "fig4_metabolic_cost")


def fig5_sparsity(df: pd.DataFrame, out: str | Path) -> list[Path]:
    """Fig. 5: proportion of zeros (eq. 23) vs beta, per K."""
    fig = _per_K_panels(df, "proportion_zeros", "proportion of zeros PZ (eq. 23)", False,
                        "Sparsity vs KL weight")
    for ax in fig.axes:
        ax.set_ylim(-0.02, 1.02)
    return _save(fig, out, "fig5_sparsity")


def fig6_tradeoff(df: pd.DataFrame, out: str | Path, K: int = 512) -> list[Path]:
    """Fig. 6: left R^2 vs PZ across beta (lines follow increasing beta); right overall
    performance sqrt((1-R^2)^2 + (1-PZ)^2)/sqrt(2) vs beta (lower is better)."""
    K, note = pick_K(df, K)
    s = summarize(df[df["K"] == K])
    betas = s["beta"]
    norm = matplotlib.colors.LogNorm(betas.min(), max(betas.max(), betas.min() * 1.0001))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    markers = dict(zip(FAMILY_ORDER, "osD"))
    for fam in families(s):
        sub = s[s["family"] == fam].sort_values("beta")
        a.plot(sub["proportion_zeros"], sub["r2"], "-", color=_color(fam), lw=1, alpha=0.7)
        sc = a.scatter(sub["proportion_zeros"], sub["r2"], c=sub["beta"], cmap="plasma", norm=norm,
                       marker=markers.get(fam, "^"), edgecolors=_color(fam), s=45, zorder=3, label=label(fam))
        for _, r in sub.iterrows():
            a.annotate(f"{r['beta']:g}", (r["proportion_zeros"], r["r2"]), fontsize=6,
                       xytext=(3, 3), textcoords="offset points")
        b.plot(sub["beta"], sub["overall_performance"], markers.get(fam, "^") + "-", color=_color(fam),
               label=label(fam))
    if len(s):
        fig.colorbar(sc, ax=a, pad=0.02).ax.set_title(r"$\beta$")
    a.set_xlabel("proportion of zeros PZ (eq. 23)")
    a.set_ylabel(r"reconstruction $R^2$")
    a.set_title(f"R$^2$ vs sparsity, K = {K}{note}", fontsize=10)
    b.set_xscale("log")
    b.set_xlabel(BETA)
    b.set_ylabel("overall performance (lower is better)")
    b.set_title(rf"$\sqrt{{(1-R^2)^2 + (1-PZ)^2}}\,/\sqrt{{2}}$ vs $\beta$, K = {K}", fontsize=10)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=8)
    return _save(fig, out, "fig6_tradeoff")


def fig7_pies(df: pd.DataFrame, out: str | Path, K: int = 512) -> list[Path]:
    """Fig. 7: pies of zeros vs non-zeros; rows = families, columns = betas."""
    K, note = pick_K(df, K)
    s = summarize(df[df["K"] == K])
    fams, betas = families(s), sorted(s["beta"].unique())
    fig, axes = plt.subplots(len(fams), len(betas), figsize=(1.7 * len(betas) + 1, 1.9 * len(fams) + 0.6),
                             squeeze=False)
    for i, fam in enumerate(fams):
        for j, beta in enumerate(betas):
            ax = axes[i][j]
            row = s[(s["family"] == fam) & (s["beta"] == beta)]
            pz = float(row["proportion_zeros"].iloc[0]) if len(row) else math.nan
            if np.isfinite(pz):
                pz = min(max(pz, 0.0), 1.0)
                ax.pie([pz, 1 - pz], colors=["lightgray", _color(fam)], startangle=90, counterclock=False,
                       wedgeprops=dict(edgecolor="white", linewidth=0.8))
                ax.text(0, -1.35, f"{100 * pz:.0f}% zeros", ha="center", va="top", fontsize=8)
            else:
                ax.text(0.5, 0.5, "no run", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if i == 0:
                ax.set_title(rf"$\beta = {beta:g}$", fontsize=9)
            if j == 0:
                ax.set_ylabel(label(fam), fontsize=10)
    fig.suptitle(f"Proportion of zeros (gray) vs non-zeros, K = {K}{note}", fontsize=10)
    return _save(fig, out, "fig7_pies")


def _beta_name(beta: float) -> str:
    return f"{beta:g}".replace("+", "")


def dictionaries(df: pd.DataFrame, sweep_dir: str | Path, out: str | Path, K: int = 512) -> list[Path]:
    """Learned dictionaries (columns ordered by per-unit KL, descending) of each family
    at K for the smallest beta, beta = 1 if present, and the largest beta (first seed).
    Runs whose weights are missing, or whose decoder is not linear (conv|conv), are skipped."""
    sweep_dir, out = Path(sweep_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for fam in families(df):
        sub = df[df["family"] == fam]
        Kf, note = pick_K(sub, K)
        sub = sub[sub["K"] == Kf]
        b = sorted(sub["beta"].unique())
        for beta in dict.fromkeys([b[0], *(x for x in b if x == 1.0), b[-1]]):
            row = sub[sub["beta"] == beta].sort_values("seed").iloc[0]
            run = sweep_dir / str(row["run_dir"])
            if not (run / "weights.safetensors").is_file():
                continue
            tensors, _ = read_weights(run / "weights.safetensors")
            if "dictionary" not in tensors:  # conv|conv: no linear dictionary to draw
                continue
            phi = tensors["dictionary"][0].double().numpy()
            order = None
            try:
                kl = json.loads((run / "metrics.json").read_text()).get("per_unit_kl")
                if kl is not None and len(kl) == phi.shape[1]:
                    order = np.argsort(-np.array([-np.inf if v is None else v for v in kl], dtype=float),
                                       kind="stable")
            except (OSError, ValueError):
                pass  # no usable metrics: natural column order
            name = f"dictionary_{fam}_K{Kf}_beta{_beta_name(beta)}"
            title = f"{label(fam)}, K = {Kf}{note}, $\\beta$ = {beta:g} (sorted by KL)"
            for ext in ("png", "pdf"):
                plot_dictionary(phi, out / f"{name}.{ext}", order=order, title=title)
                paths.append(out / f"{name}.{ext}")
    return paths


def make_all(sweep_dir: str | Path, out: str | Path | None = None, K: int = 512) -> list[Path]:
    """Every figure of the paper for the sweep in ``sweep_dir`` (default out: ``sweep_dir/figures``)."""
    sweep_dir = Path(sweep_dir)
    df = load_results(sweep_dir)
    out = sweep_dir / FIGURES if out is None else Path(out)
    paths = fig1_kl_nonlinearities(out) + fig2_posteriors(out) + fig3_relu_moments(out)
    paths += fig4_metabolic_cost(df, out) + fig5_sparsity(df, out)
    paths += fig6_tradeoff(df, out, K) + fig7_pies(df, out, K)
    paths += dictionaries(df, sweep_dir, out, K)
    return paths
