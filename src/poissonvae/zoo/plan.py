"""The P-VAE paper's model-zoo experiments as lists of variants, each trained as a small sweep.

A :class:`Variant` fixes what a sweep shares (family, architecture, gradient
estimator, temperature schedule); the betas and seeds of a variant train
together as one stacked model through :func:`poissonvae.sweep.run_sweep`, so
everything the sweep gives (resume after a kill, skipping finished runs, the
Ray engine, results.parquet) holds here too. Each variant lives in its own
sweep directory ``OUT/variants/<label>``; experiments that need the same
variant (Table 3 and Fig. 4 use the models of Table 2) share its runs.

Experiments (P-VAE paper section 5 and appendix D):

==============  =============================================================
``estimators``  Table 2 / 5: every family x applicable estimator x encoder
``active``      Table 3 / Fig. 10: proportion of active (not dead) units
``dictionaries`` Fig. 4: lin|lin dictionaries of every family, by unit KL
``sparsity``    Fig. 5a: MSE vs lifetime sparsity across beta, per family
``temperature`` Fig. 9: final temperature, linear vs exponential, hard forward
==============  =============================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import ConfigError, ModelConfig, TrainConfig, _from_dict, load_json, save_json
from ..data.config import DataConfig
from ..families import FAMILIES, get_family
from ..sweep.grid import SweepConfig

EXPERIMENTS = ("estimators", "active", "dictionaries", "sparsity", "temperature")
ARCHS = ("lin|lin", "conv|lin", "conv|conv")
# The families of P-VAE Tables 2, 3 and 5 (G = plain Gaussian with a N(0, 1) prior).
TABLE_FAMILIES = ["poisson", "gaussian", "laplace", "categorical"]
SPARSITY_FAMILIES = ["poisson", "gaussian", "laplace", "categorical", "gaussian_relu", "gaussian_exp"]


@dataclass(frozen=True)
class Variant:
    """What the runs of one sweep share beyond data: family, encoder|decoder, estimator, temperature."""

    family: str
    arch: str = "lin|lin"
    estimator: str = "exact"
    temperature_end: float = 0.05
    temperature_schedule: str = "linear"

    @property
    def label(self) -> str:
        """Directory name, e.g. ``poisson_conv-lin_mc`` (temperature only when it matters and is not the default)."""
        name = f"{self.family}_{self.arch.replace('|', '-')}_{self.estimator}"
        if self.estimator != "exact" and (self.temperature_end != 0.05 or self.temperature_schedule != "linear"):
            name += f"_T{self.temperature_end:g}_{self.temperature_schedule}"
        return name


def estimators_for(family: str, arch: str) -> list[str]:
    """Estimators that apply: EX only with a linear decoder (eq. 21), ST only for
    relaxed discrete families (a hard forward pass of a continuous sample means nothing)."""
    fam = get_family(family)
    out = [] if arch.endswith("|conv") else ["exact"]
    out.append("mc")
    if fam.uses_temperature:
        out.append("st")
    return out


@dataclass
class ZooSettings:
    """What every variant of an experiment shares (saved as ``zoo.json`` beside the runs)."""

    K: int = 512
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    betas: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0, 2.0, 4.0])  # Fig. 5a only
    families: list[str] | None = None  # None: the experiment's own list
    archs: list[str] = field(default_factory=lambda: ["lin|lin", "conv|lin"])
    temperatures: list[float] = field(default_factory=lambda: [0.5, 0.1, 0.05, 0.01])  # Fig. 9 only
    conv_channels: int = 16  # width of the conv encoders/decoders (see poissonvae.conv)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "ZooSettings":
        if not isinstance(self.K, int) or isinstance(self.K, bool) or self.K < 1:
            raise ConfigError(f"zoo K must be an integer >= 1, got {self.K!r}")
        for name in ("seeds", "betas", "archs", "temperatures"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"zoo {name} is empty")
            if len(set(values)) != len(values):
                raise ConfigError(f"zoo {name} has duplicate values: {values}")
        bad = [a for a in self.archs if a not in ARCHS]
        if bad:
            raise ConfigError(f"zoo archs: unknown architectures {bad}; known: {list(ARCHS)}")
        if self.families is not None:
            unknown = [f for f in self.families if f not in FAMILIES]
            if unknown or not self.families:
                raise ConfigError(f"zoo families: unknown or none {unknown or self.families}; known: {sorted(FAMILIES)}")
        if not isinstance(self.conv_channels, int) or self.conv_channels < 1:
            raise ConfigError(f"zoo conv_channels must be an integer >= 1, got {self.conv_channels!r}")
        if any(not t > 0 for t in self.temperatures):
            raise ConfigError(f"zoo temperatures must be > 0, got {self.temperatures}")
        return self

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("K", "seeds", "betas", "families", "archs", "temperatures", "conv_channels")}
        return {**d, "data": self.data.to_dict(), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict) -> "ZooSettings":
        if not isinstance(d, dict):
            raise ConfigError(f"zoo settings: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        try:
            data = DataConfig.from_dict(d.pop("data", {}))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"zoo settings, data: {e}") from None
        train = _from_dict(TrainConfig, d.pop("train", {}), "zoo settings, train")
        allowed = {f.name for f in dataclasses.fields(cls)} - {"data", "train"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"zoo settings: unknown keys {unknown}; allowed: {sorted(allowed)}")
        return cls(data=data, train=train, **d)

    def save(self, path: Path) -> None:
        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: Path) -> "ZooSettings":
        return cls.from_dict(load_json(path, "zoo settings"))


def preset(name: str) -> ZooSettings:
    """``quick``: sized for a 2-core CPU: K = 64, 2 seeds, conv width 8, and the
    metabolic-cost sweep's quick data and budget (40,000 patches, 20 + 1 epochs
    of batches of 250: fewer steps leave the P-VAE's low initial rates barely
    moved); lin|lin only, as a conv|lin step costs ~60x a lin|lin one on a CPU
    (add ``archs=["lin|lin", "conv|lin"]`` for the conv column). ``paper``: the P-VAE paper's K = 512, 5 seeds, full data and 3000
    epochs (needs a GPU)."""
    if name == "paper":
        return ZooSettings()
    if name == "quick":
        return ZooSettings(K=64, seeds=[0, 1], conv_channels=8, archs=["lin|lin"],
                           data=DataConfig(n_train=40_000, n_val=10_000),
                           train=TrainConfig(epochs=20, warmup_epochs=1, batch_size=250, checkpoint_every=2))
    raise ConfigError(f"unknown zoo preset {name!r}; known: ['paper', 'quick']")


def variants(experiment: str, s: ZooSettings) -> list[Variant]:
    """The variants an experiment trains, in order."""
    if experiment not in EXPERIMENTS:
        raise ConfigError(f"unknown zoo experiment {experiment!r}; known: {list(EXPERIMENTS)}")
    linear_archs = [a for a in s.archs if not a.endswith("|conv")]
    if experiment == "estimators":
        fams = s.families or TABLE_FAMILIES
        return [Variant(f, a, e) for a in linear_archs for f in fams for e in estimators_for(f, a)]
    if experiment == "active":  # the EX models of Table 2 (closed form: exact gradients, and cheapest on a CPU)
        return [Variant(f, a, "exact") for a in linear_archs for f in (s.families or TABLE_FAMILIES)]
    if experiment == "dictionaries":
        return [Variant(f, "lin|lin", "exact") for f in (s.families or TABLE_FAMILIES)]
    if experiment == "sparsity":
        return [Variant(f, a, "exact") for a in linear_archs for f in (s.families or SPARSITY_FAMILIES)]
    # temperature (Fig. 9): P-VAE with relaxed samples (MC) or a hard forward pass (ST)
    out = []
    for a in s.archs:
        for sched in ("linear", "exponential"):
            out += [Variant("poisson", a, "mc", t, sched) for t in s.temperatures]
        out += [Variant("poisson", a, "st", t, "linear") for t in s.temperatures]
    return out


def betas_for(experiment: str, s: ZooSettings) -> list[float]:
    return list(s.betas) if experiment == "sparsity" else [1.0]


def sweep_for(v: Variant, experiment: str, s: ZooSettings) -> SweepConfig:
    """The sweep that trains variant ``v``: one (family, K) group of betas x seeds."""
    model = ModelConfig(K=s.K, input_dim=s.data.patch_size ** 2, arch=v.arch, conv_channels=s.conv_channels)
    train = dataclasses.replace(s.train, estimator=v.estimator, temperature_end=v.temperature_end,
                                temperature_schedule=v.temperature_schedule)
    return SweepConfig(families=[v.family], Ks=[s.K], betas=betas_for(experiment, s), seeds=list(s.seeds),
                       data=s.data, model=model, train=train)


def variant_dir(out: Path, v: Variant) -> Path:
    return Path(out) / "variants" / v.label


def run_variants(experiment: str, s: ZooSettings, out: str | Path, engine: str = "local",
                 address: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Train (or resume, or skip) every variant of ``experiment`` and return their
    results, one row per run, with the variant's fields as columns."""
    from tqdm.auto import tqdm

    from ..sweep import run_sweep

    s.validate()
    out = Path(out)
    vs = variants(experiment, s)
    sweeps = [sweep_for(v, experiment, s) for v in vs]
    for sw in sweeps:  # every run's config, before any work
        sw.validate()
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for v, sw in tqdm(list(zip(vs, sweeps)), desc=f"zoo {experiment}", unit="variant", disable=not progress):
        df = run_sweep(sw, variant_dir(out, v), engine=engine, address=address, progress=progress)
        frames.append(tag(df, v, variant_dir(out, v)))
    return pd.concat(frames, ignore_index=True)


def tag(df: pd.DataFrame, v: Variant, where: Path) -> pd.DataFrame:
    """A variant's results table with its fields and absolute run paths added."""
    df = df.copy()
    for k, val in dataclasses.asdict(v).items():
        df[k] = val
    df["variant"] = v.label
    df["run_dir"] = [str(Path(where) / r) for r in df["run_dir"]]
    return df
