"""The search space of `visiontune tune`: what a trial may change in the base run config.

Each dimension is a `Range` (sampled), a tuple of choices, or None (fixed: the base config's
value). The defaults follow what the seeds found matters: input size and augmentation first, then
learning rate, backbone, freeze epochs and label smoothing, and fine-tuning against frozen
features. The `strong` augmentation is left out by default: it brings an EMA of the weights
(decay 0.999) that is still close to the initial head after a trial's few hundred steps, so its
trials score near chance (add it with --space for long trials). Dimensions that mean nothing for
a trial are not sampled: a features trial has no learning rate, and rotation is only drawn when
the trial augments at all.

In YAML (`--space FILE`) a range is a mapping and a list is a set of choices:

    lr: {low: 0.0003, high: 0.003, log: true}
    image_size: [32, 64]
    method: [finetune]          # one choice: fixed
    rotation: null              # fixed to the base config's
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from visiontune.config import AUGMENT_PRESETS, FeaturesConfig, RunConfig, check_choice
from visiontune.errors import ConfigError

PARAMS = ("method", "backbone", "image_size", "lr", "freeze_epochs", "label_smoothing", "augment", "rotation")
INT_PARAMS = ("image_size", "freeze_epochs")
FLOAT_PARAMS = ("lr", "label_smoothing", "rotation")
TUNED_METHODS = ("finetune", "features")  # scratch trains too slowly to search over


@dataclass(frozen=True)
class Range:
    """A numeric interval to sample from; `log` for scales like the learning rate, `step` for a lattice."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ConfigError(f"a search range needs low <= high. Received: low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ConfigError(f"a log-scale search range needs low > 0. Received: low={self.low}")


Dimension = Range | tuple[Any, ...] | None


@dataclass(frozen=True)
class SearchSpace:
    """What `tune` searches; `backbone=()` means every offline backbone whose weights are installed."""

    method: Dimension = TUNED_METHODS
    backbone: Dimension = ()
    image_size: Dimension = (32, 64, 96, 128, 160, 224)
    lr: Dimension = Range(1e-4, 1e-2, log=True)
    freeze_epochs: Dimension = Range(0, 2, step=1)
    label_smoothing: Dimension = Range(0.0, 0.2, step=0.05)
    augment: Dimension = ("none", "light", "standard")  # not `strong`: its EMA needs longer runs than a trial's
    rotation: Dimension = Range(0.0, 90.0, step=5.0)

    def __post_init__(self) -> None:
        for name in PARAMS:
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for method in self.choices("method"):
            check_choice("method", method, TUNED_METHODS)
        for preset in self.choices("augment"):
            check_choice("augment", preset, AUGMENT_PRESETS)
        for name in ("method", "backbone", "augment"):
            if isinstance(getattr(self, name), Range):
                raise ConfigError(f"`{name}` takes a list of choices, not a range")

    def choices(self, name: str) -> tuple[Any, ...]:
        value = getattr(self, name)
        return value if isinstance(value, tuple) else ()

    def searched(self) -> list[str]:
        """The dimensions a trial samples (more than one possible value)."""
        out = []
        for name in PARAMS:
            value = getattr(self, name)
            if (isinstance(value, Range) and value.low < value.high) or (isinstance(value, tuple) and len(value) > 1):
                out.append(name)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {name: _dimension_dict(getattr(self, name)) for name in PARAMS}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchSpace:
        """A space from YAML: mappings are ranges, lists are choices, null fixes a dimension."""
        unknown = set(values) - set(PARAMS)
        if unknown:
            raise ConfigError(f"search space: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(PARAMS)}")
        return cls(**{name: _dimension(name, value) for name, value in values.items()})

    @classmethod
    def from_grid(cls, grid: dict[str, tuple[Any, ...]]) -> SearchSpace:
        """Only the grid's keys vary (over exactly their values); everything else is the base config's."""
        return cls(**{name: grid.get(name) for name in PARAMS})


def _dimension(name: str, value: Any) -> Dimension:
    if value is None or isinstance(value, Range):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"low", "high", "log", "step"}
        if unknown or not {"low", "high"} <= set(value):
            raise ConfigError(f"search space: `{name}` as a range is {{low: L, high: H[, log: true][, step: S]}}")
        return Range(float(value["low"]), float(value["high"]), bool(value.get("log", False)), value.get("step"))
    if isinstance(value, list | tuple):
        return tuple(value)
    return (value,)  # a single value: fixed


def _dimension_dict(value: Dimension) -> Any:
    if isinstance(value, Range):
        return dataclasses.asdict(value)
    return list(value) if isinstance(value, tuple) else value


def parse_grid(specs: list[str]) -> dict[str, tuple[Any, ...]]:
    """`["image_size=32,64,128"]` -> {"image_size": (32, 64, 128)}; one spec per searched key.

    Example:
        >>> parse_grid(["image_size=32,64", "augment=light,standard"])
        {'image_size': (32, 64), 'augment': ('light', 'standard')}
    """
    grid: dict[str, tuple[Any, ...]] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip().replace("-", "_")
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not sep or not values:
            raise ConfigError(f"--grid takes KEY=V1,V2,... e.g. image_size=32,64,128. Received: {spec!r}")
        check_choice("--grid key", key, PARAMS)
        if key in grid:
            raise ConfigError(f"--grid names {key} twice; give all its values in one KEY=V1,V2,... option")
        grid[key] = tuple(dict.fromkeys(_grid_value(key, v) for v in values))
    return grid


def grid_size(grid: dict[str, tuple[Any, ...]]) -> int:
    """How many combinations a grid has (1 for no grid)."""
    return math.prod(len(values) for values in grid.values())


def _grid_value(key: str, text: str) -> Any:
    try:
        if key in INT_PARAMS:
            return int(text)
        if key in FLOAT_PARAMS:
            return float(text)
    except ValueError:
        kind = "whole numbers" if key in INT_PARAMS else "numbers"
        raise ConfigError(f"--grid {key} takes {kind}. Received: {text!r}") from None
    return text


def suggest_params(trial: Any, space: SearchSpace, base: RunConfig) -> dict[str, Any]:
    """Ask an Optuna trial for this trial's settings; dimensions that don't apply are not drawn.

    A fixed dimension is not drawn either (it comes from `base`), so parameter importances only
    rank what varied.
    """
    params: dict[str, Any] = {}

    def draw(name: str) -> None:
        value = getattr(space, name)
        if isinstance(value, tuple) and len(value) > 1:
            params[name] = trial.suggest_categorical(name, list(value))
        elif isinstance(value, Range) and value.low < value.high:
            if name in INT_PARAMS:
                params[name] = trial.suggest_int(name, int(value.low), int(value.high), step=int(value.step or 1))
            else:
                drawn = trial.suggest_float(name, value.low, value.high, log=value.log, step=value.step)
                params[name] = round(drawn, 12)  # a stepped draw is low + k * step: 0.15000000000000002 -> 0.15
        elif isinstance(value, tuple) and value:
            params[name] = value[0]
        elif isinstance(value, Range):
            params[name] = int(value.low) if name in INT_PARAMS else value.low

    for name in ("method", "backbone", "image_size"):
        draw(name)
    if params.get("method", base.train.method) != "features":
        for name in ("lr", "freeze_epochs", "label_smoothing", "augment"):
            draw(name)
        if params.get("augment", base.train.augment_preset) != "none":
            draw("rotation")
    return params


def apply_params(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The base config with a trial's settings in place (raises ConfigError for an invalid value).

    Switching a features base to fine-tuning drops the features settings (heads, views, tta).
    """
    unknown = set(params) - set(PARAMS)
    if unknown:
        raise ConfigError(f"unknown trial parameter(s): {', '.join(sorted(unknown))}")
    config = base
    if "backbone" in params:
        config = config.replace("model", backbone=params["backbone"])
    if "image_size" in params:
        config = config.replace("model", image_size=int(params["image_size"]))
    train = {k: v for k, v in params.items() if k in ("method", "augment", "rotation")}
    finetune = {k: v for k, v in params.items() if k in ("lr", "label_smoothing")}
    if "freeze_epochs" in params:
        finetune["freeze_epochs"] = int(params["freeze_epochs"])
    config = config.replace("train", **train).replace("finetune", **finetune)
    if config.train.method != "features":
        config = dataclasses.replace(config, features=FeaturesConfig())  # a features base's settings mean nothing
    return config
