"""Latent families behind one interface, looked up by name."""

from __future__ import annotations

from .base import LatentFamily, Posterior
from .categorical import CategoricalFamily
from .gaussian import GaussianFamily, GaussianReluFamily
from .gaussian_exp import GaussianExpFamily
from .laplace import LaplaceFamily
from .poisson import PoissonFamily

FAMILIES: dict[str, type[LatentFamily]] = {
    PoissonFamily.name: PoissonFamily,
    GaussianFamily.name: GaussianFamily,
    GaussianReluFamily.name: GaussianReluFamily,
    LaplaceFamily.name: LaplaceFamily,
    GaussianExpFamily.name: GaussianExpFamily,
    CategoricalFamily.name: CategoricalFamily,
}


def get_family(name: str, **options) -> LatentFamily:
    """Instantiate the family called ``name``; unknown names raise ``ValueError``."""
    try:
        cls = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown latent family {name!r}; known families: {sorted(FAMILIES)}") from None
    return cls(**options)


__all__ = ["FAMILIES", "LatentFamily", "Posterior", "get_family", "PoissonFamily", "GaussianFamily", "GaussianReluFamily",
           "LaplaceFamily", "GaussianExpFamily", "CategoricalFamily"]
