"""poissonvae: Poisson variational autoencoders and the metabolic-cost experiments."""

from .config import ConfigError, ModelConfig, RunConfig, TrainConfig
from .data import DataConfig, DataError
from .families import FAMILIES, get_family
from .conv import ConvVAE
from .models import LinearVAE, build_model

__version__ = "0.1.0"
__all__ = ["ConfigError", "ConvVAE", "DataConfig", "DataError", "FAMILIES", "LinearVAE", "ModelConfig", "RunConfig",
           "TrainConfig", "build_model", "get_family", "__version__"]
