"""The P-VAE paper's model zoo: estimator comparison, dead neurons, dictionaries,
rate-distortion across beta and the temperature ablation (P-VAE Tables 2-3, Figs. 4, 5a, 9, 10)."""

from .analysis import active_fraction, active_table, dead_threshold, estimator_table, percent_drop
from .plan import EXPERIMENTS, Variant, ZooSettings, estimators_for, preset, run_variants, variants
from .run import analyse, run_experiment

__all__ = ["EXPERIMENTS", "Variant", "ZooSettings", "active_fraction", "active_table", "analyse", "dead_threshold",
           "estimator_table", "estimators_for", "percent_drop", "preset", "run_experiment", "run_variants", "variants"]
