"""Learning-rate schedules as pure functions of the step, so a resumed run needs only the step count.

The one-cycle policy (warm up, then cosine down; Smith 2018, as popularised by fastai) and the
range test that suggests a learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class OneCycle:
    """LR multiplier over `total` steps: from 1/div up to 1 over `pct_start`, then down to 1/(div*final_div)."""

    total: int
    pct_start: float = 0.25
    div: float = 25.0
    final_div: float = 1e5

    def factor(self, step: int) -> float:
        warm = max(1, round(self.total * self.pct_start))
        if step < warm:
            return _cos_between(1.0 / self.div, 1.0, step / warm)
        rest = max(1, self.total - warm)
        return _cos_between(1.0, 1.0 / (self.div * self.final_div), min(1.0, (step - warm) / rest))


@dataclass(frozen=True)
class Ramp:
    """LR multiplier rising exponentially from `low` to 1 over `total` steps: the range test's sweep."""

    low: float
    total: int

    def factor(self, step: int) -> float:
        return self.low ** (1 - min(step, self.total - 1) / max(1, self.total - 1))


def _cos_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's lr to its `max_lr` times `factor`; returns the largest lr (the head's)."""
    for group in optimizer.param_groups:
        group["lr"] = group["max_lr"] * factor
    return max(group["lr"] for group in optimizer.param_groups)


@dataclass
class LRFinderResult:
    """The range test's curve and its suggestion (the steepest descent of the smoothed loss)."""

    lrs: list[float]
    losses: list[float]
    suggestion: float


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """Steepest negative slope of loss against log(lr), before the loss blows up.

    Falls back to a tenth of the lr at the minimum loss when the curve is too short or flat.
    """
    if len(losses) < 5:
        return lrs[int(np.argmin(losses))] / 10 if losses else 1e-3
    log_lrs = np.log10(np.asarray(lrs))
    slopes = np.gradient(np.asarray(losses), log_lrs)
    stop = int(np.argmin(losses)) + 1
    steepest = int(np.argmin(slopes[:stop]))
    if slopes[steepest] >= 0:
        return lrs[stop - 1] / 10
    return float(lrs[steepest])


def smooth(values: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average, as the range test plots it."""
    out, avg = [], 0.0
    for i, value in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * value
        out.append(avg / (1 - beta**i))
    return out
