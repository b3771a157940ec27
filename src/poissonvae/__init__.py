"""poissonvae: Poisson variational autoencoders and the metabolic-cost experiments."""

from .config import ConfigError, ModelConfig, RunConfig, TrainConfig
from .data import DataConfig, DataError
from .families import FAMILIES, get_family
from .models import LinearVAE

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataConfig", "DataError", "FAMILIES", "LinearVAE", "ModelConfig", "RunConfig",
           "TrainConfig", "get_family", "__version__"]
