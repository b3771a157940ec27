"""The sweep grid: families x K x beta x seeds, its presets, and its groups.

A group is every (beta, seed) variant of one (family, K): they share shapes,
so they train together as one stacked model (see :mod:`poissonvae.runs`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, ModelConfig, RunConfig, TrainConfig, load_json, save_json
from ..data.config import DataConfig
from ..families import FAMILIES

PAPER_KS = [64, 128, 192, 256, 384, 512, 1024, 2048]
PAPER_BETAS = [0.01, 0.1, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0]


@dataclass
class SweepConfig:
    """A grid of runs and the settings they share (saved as ``sweep.json``)."""

    families: list[str] = field(default_factory=lambda: ["poisson", "gaussian_relu"])
    Ks: list[int] = field(default_factory=lambda: list(PAPER_KS))
    betas: list[float] = field(default_factory=lambda: list(PAPER_BETAS))
    seeds: list[int] = field(default_factory=lambda: [0])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # family and K are set per run
    train: TrainConfig = field(default_factory=TrainConfig)  # beta and seed are set per run

    def validate(self) -> "SweepConfig":
        for name, values in (("families", self.families), ("Ks", self.Ks), ("betas", self.betas), ("seeds", self.seeds)):
            if not isinstance(values, list) or not values:
                raise ConfigError(f"sweep.{name} is empty: the grid must have at least one value of each axis")
            dupes = sorted({v for v in values if values.count(v) > 1}, key=str)
            if dupes:
                raise ConfigError(f"sweep.{name} has duplicate values {dupes}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ConfigError(f"sweep.families: unknown latent families {unknown}; known: {sorted(FAMILIES)}")
        bad_k = [k for k in self.Ks if not isinstance(k, int) or isinstance(k, bool) or k < 1]
        if bad_k:
            raise ConfigError(f"sweep.Ks must be integers >= 1, got {bad_k}")
        bad_b = [b for b in self.betas if not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0]
        if bad_b:
            raise ConfigError(f"sweep.betas must be finite numbers >= 0, got {bad_b}")
        bad_s = [s for s in self.seeds if not isinstance(s, int) or isinstance(s, bool) or s < 0]
        if bad_s:
            raise ConfigError(f"sweep.seeds must be integers >= 0, got {bad_s}")
        for run in self.runs():
            run.validate()
        return self

    def run_config(self, family: str, K: int, beta: float, seed: int) -> RunConfig:
        return RunConfig(
            data=dataclasses.replace(self.data),
            model=dataclasses.replace(self.model, family=family, K=K),
            train=dataclasses.replace(self.train, beta=float(beta), seed=seed),
        )

    def runs(self) -> list[RunConfig]:
        return [self.run_config(f, k, b, s) for f, k in self.group_keys() for b in self.betas for s in self.seeds]

    def group_keys(self) -> list[tuple[str, int]]:
        """(family, K) pairs, largest K first so the longest groups start early."""
        return [(f, k) for k in sorted(self.Ks, reverse=True) for f in self.families]

    def groups(self) -> dict[tuple[str, int], list[RunConfig]]:
        return {(f, k): [self.run_config(f, k, b, s) for b in self.betas for s in self.seeds] for f, k in self.group_keys()}

    # ------------------------------------------------------------- file form
    def to_dict(self) -> dict[str, Any]:
        return {"families": list(self.families), "Ks": list(self.Ks), "betas": [float(b) for b in self.betas],
                "seeds": list(self.seeds), **{k: v for k, v in RunConfig(self.data, self.model, self.train).to_dict().items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"sweep config: expected a mapping, got {type(d).__name__}")
        allowed = {"families", "Ks", "betas", "seeds", "data", "model", "train"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"sweep config: unknown keys {unknown}; allowed: {sorted(allowed)}")
        shared = RunConfig.from_dict({k: d[k] for k in ("data", "model", "train") if k in d})
        axes = {k: list(d[k]) if isinstance(d[k], (list, tuple)) else d[k] for k in ("families", "Ks", "betas", "seeds") if k in d}
        return cls(data=shared.data, model=shared.model, train=shared.train, **axes)

    def save(self, path: str | Path) -> None:
        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "SweepConfig":
        return cls.from_dict(load_json(path, "sweep config"))


def run_name(cfg: RunConfig) -> str:
    """Directory name of a run inside a sweep, e.g. ``poisson_K512_beta1_seed0``."""
    return f"{cfg.model.family}_K{cfg.model.K}_beta{cfg.train.beta:g}_seed{cfg.train.seed}"


def preset(name: str) -> SweepConfig:
    """``paper``: the full 128-model grid with the paper's training settings.

    ``quick``: both families at K in {64, 512} over the paper's eight betas,
    shortened to finish in minutes on 2 CPU cores: 40,000 training patches,
    20 + 1 epochs, and batches of 250 instead of 1000. At a fixed budget the
    smaller batch gives four times the updates, which the P-VAE needs: its
    low-beta models raise their rates (and shrink their dictionary norms)
    slowly; with batches of 1000 the metabolic-cost effect is weaker at this
    budget (measured 8.6x vs 14.5x from beta 0.01 to 8 at K = 512).
    """
    if name == "paper":
        return SweepConfig()
    if name == "quick":
        return SweepConfig(
            Ks=[64, 512],
            data=DataConfig(n_train=40_000, n_val=10_000),
            train=TrainConfig(epochs=20, warmup_epochs=1, batch_size=250, checkpoint_every=2),
        )
    raise ConfigError(f"unknown sweep preset {name!r}; known presets: ['paper', 'quick']")


PRESETS = ("paper", "quick")
