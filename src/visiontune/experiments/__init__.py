"""Experiments: list and compare run folders, and search hyperparameters with Optuna.

Example:
    >>> from visiontune.experiments import find_runs, tune, TuneConfig  # doctest: +SKIP
    >>> result = tune(TuneConfig(RunConfig(DataConfig(source="demo", sample=0.1)), trials=20))  # doctest: +SKIP
"""

from __future__ import annotations

from visiontune.experiments.compare import Comparison, compare_runs, config_differences
from visiontune.experiments.space import Range, SearchSpace, apply_params, parse_grid, suggest_params
from visiontune.experiments.tune import TuneConfig, TuneResult, tune

__all__ = [
    "Comparison",
    "Range",
    "SearchSpace",
    "TuneConfig",
    "TuneResult",
    "apply_params",
    "compare_runs",
    "config_differences",
    "parse_grid",
    "suggest_params",
    "tune",
]
