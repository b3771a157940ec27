"""Typed run configuration: dataclasses that validate themselves and round-trip to JSON.

Defaults are the metabolic-cost paper's settings (appendix "Training
configuration") and the authors' reference-code defaults listed in REFERENCE.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.config import DataConfig
from .families import FAMILIES

ESTIMATORS = ("exact", "mc", "st")
# <encoder|decoder> architectures in the P-VAE paper's notation (P-VAE sec. 4, "Architecture
# notation"): lin|lin is the metabolic-cost paper's model; conv|lin keeps the linear decoder (and so
# the closed-form objective, eqs. 17, 21); conv|conv has a nonlinear decoder (Monte Carlo only).
ARCHS = ("lin|lin", "conv|lin", "conv|conv")
TEMPERATURE_SCHEDULES = ("linear", "exponential")


class ConfigError(ValueError):
    """A configuration value is invalid."""


def _from_dict(cls, d: dict[str, Any], where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(names)}")
    return cls(**d)


@dataclass
class ModelConfig:
    """Latent family, size and architecture of a VAE.

    ``arch`` is ``"lin|lin"`` (linear encoder and decoder, the default and the
    metabolic-cost paper's model), ``"conv|lin"`` (residual conv encoder, linear
    decoder) or ``"conv|conv"`` (conv encoder and decoder); see
    :mod:`poissonvae.conv`. ``conv_channels`` is the width ``C`` of the conv
    networks (stages of ``C`` and ``2C`` channels); lin|lin ignores it.
    """

    family: str = "poisson"
    K: int = 512
    input_dim: int = 256
    init_std: float = 0.05  # ref. code: encoder and dictionary ~ N(0, 0.05)
    indicator: str = "cubic"  # relaxed Poisson indicator (metabolic-cost sweep: cubic)
    n_exp: int | None = None  # None: derived once per epoch from the largest rate
    learn_prior: bool | None = None  # None: the family's default
    arch: str = "lin|lin"  # one of ARCHS; configs saved before it existed load as lin|lin
    conv_channels: int = 16  # C of the conv encoder/decoder (small enough for a CPU)

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family: unknown latent family {self.family!r}; known: {sorted(FAMILIES)}")
        if self.arch not in ARCHS:
            raise ConfigError(f"model.arch must be one of {list(ARCHS)} (encoder|decoder), got {self.arch!r}")
        if isinstance(self.conv_channels, bool) or not isinstance(self.conv_channels, int) or self.conv_channels < 1:
            raise ConfigError(f"model.conv_channels must be an integer >= 1, got {self.conv_channels!r}")
        if not isinstance(self.K, int) or self.K < 1:
            raise ConfigError(f"model.K must be an integer >= 1, got {self.K!r}")
        if not isinstance(self.input_dim, int) or self.input_dim < 1:
            raise ConfigError(f"model.input_dim must be an integer >= 1, got {self.input_dim!r}")
        if not self.init_std > 0:
            raise ConfigError(f"model.init_std must be > 0, got {self.init_std}")
        if self.indicator not in ("cubic", "sigmoid"):
            raise ConfigError(f"model.indicator must be 'cubic' or 'sigmoid', got {self.indicator!r}")
        if self.n_exp is not None and (not isinstance(self.n_exp, int) or self.n_exp < 1):
            raise ConfigError(f"model.n_exp must be None or an integer >= 1, got {self.n_exp!r}")
        if self.arch != "lin|lin":
            side = math.isqrt(self.input_dim)
            if side * side != self.input_dim or side < 4:
                raise ConfigError(
                    f"model.arch {self.arch!r} needs square one-channel images of side >= 4: model.input_dim "
                    f"must be a square >= 16 (256 for 16x16 patches, 784 for 28x28 digits), got {self.input_dim}")


@dataclass
class TrainConfig:
    """Optimisation and schedules (paper: Adamax, lr 0.005, batch 1000, 3000 + 5 warm-up epochs)."""

    epochs: int = 3000
    warmup_epochs: int = 5
    lr: float = 0.005
    eta_min: float = 1e-5  # cosine floor (ref. code)
    batch_size: int = 1000
    weight_decay: float = 0.0
    grad_clip: float = 500.0  # max gradient norm, per model
    beta: float = 1.0  # KL weight of eq. (20)
    beta_start: float = 1e-4  # KL annealing starts here (ref. code)
    kl_anneal_fraction: float = 0.5  # of all iterations
    estimator: str = "exact"  # exact (closed form, eq. 21) | mc (relaxed samples) | st (hard forward)
    temperature_start: float = 1.0
    temperature_end: float = 0.05
    temperature_anneal_fraction: float = 0.5
    temperature_schedule: str = "linear"
    seed: int = 0  # initialisation and sampling noise
    shuffle_seed: int = 0  # batch order (shared by models trained together)
    eval_every: int = 0  # epochs between validation passes; 0 = only at the end
    checkpoint_every: int = 25  # epochs between checkpoints
    eval_batch_size: int = 5000
    device: str = "cpu"  # cpu | cuda | auto
    compile: bool = False  # torch.compile the families' elementwise kernels (needs a compiler; same math)
    cuda_graph: bool = False  # replay each exact step as one captured CUDA graph (GPU only; same math)

    def validate(self) -> None:
        ints = {"epochs": 1, "warmup_epochs": 0, "batch_size": 1, "eval_every": 0, "checkpoint_every": 1, "eval_batch_size": 1}
        for name, low in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"train.{name} must be an integer >= {low}, got {v!r}")
        for name in ("lr", "temperature_start"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ("eta_min", "weight_decay", "grad_clip", "beta", "beta_start", "temperature_end"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and v == v and v != float("inf")):
                raise ConfigError(f"train.{name} must be a finite number >= 0, got {v!r}")
        for name in ("kl_anneal_fraction", "temperature_anneal_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"train.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"train.estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ConfigError(f"train.temperature_schedule must be one of {TEMPERATURE_SCHEDULES}, got {self.temperature_schedule!r}")
        if self.temperature_schedule == "exponential" and self.temperature_end <= 0:
            raise ConfigError("train.temperature_end must be > 0 for an exponential schedule")
        for name in ("compile", "cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"train.{name} must be true or false, got {getattr(self, name)!r}")
        if self.cuda_graph and self.device == "cpu":
            raise ConfigError("train.cuda_graph needs a CUDA device (train.device cuda, cuda:N or auto)")
        if self.cuda_graph and self.estimator != "exact":
            raise ConfigError(f"train.cuda_graph needs train.estimator 'exact' (the samplers draw on the host "
                              f"between steps), got {self.estimator!r}")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ConfigError(f"train.device must be cpu, cuda, cuda:N or auto, got {self.device!r}")


@dataclass
class RunConfig:
    """Everything that defines one trained model; saved as ``config.json`` in its run directory."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        self.data.validate()
        self.model.validate()
        self.train.validate()
        if self.model.input_dim != self.data.patch_size**2:
            raise ConfigError(
                f"model.input_dim ({self.model.input_dim}) must equal data.patch_size^2 ({self.data.patch_size**2})"
            )
        if self.model.arch == "conv|conv" and self.train.estimator == "exact":
            raise ConfigError(
                "train.estimator 'exact' needs a linear decoder: the closed-form reconstruction (eqs. 17, 21) "
                "holds only for x_hat = Phi h, and model.arch 'conv|conv' has a nonlinear decoder; "
                "use train.estimator 'mc' or 'st'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data.to_dict(), "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"run config: expected a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {"data", "model", "train"})
        if unknown:
            raise ConfigError(f"run config: unknown sections {unknown}; allowed: ['data', 'model', 'train']")
        try:
            data = DataConfig.from_dict(d.get("data", {}))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"data: {e}") from None
        return cls(
            data=data,
            model=_from_dict(ModelConfig, d.get("model", {}), "model"),
            train=_from_dict(TrainConfig, d.get("train", {}), "train"),
        )

    def save(self, path: str | Path) -> None:
        save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(load_json(path, "run config"))


def save_json(d: dict[str, Any], path: str | Path) -> None:
    """Write a config mapping as sorted, indented JSON."""
    Path(path).write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def load_json(path: str | Path, what: str) -> Any:
    """Read a JSON config file; unreadable or malformed files raise ConfigError."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from None
