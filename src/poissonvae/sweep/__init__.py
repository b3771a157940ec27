"""Sweeps over families x K x beta x seeds (the metabolic-cost experiment)."""

from .grid import PRESETS, SweepConfig, preset, run_name
from .results import RESULTS, collect, write_results
from .runner import ENGINES, run_sweep

__all__ = ["ENGINES", "PRESETS", "RESULTS", "SweepConfig", "collect", "preset", "run_name", "run_sweep", "write_results"]
