from __future__ import annotations

import itertools

import numpy as np
import pytest

from visiontune.training.schedule import OneCycle, smooth, suggest_lr


def test_one_cycle_warms_up_then_anneals() -> None:
    cycle = OneCycle(total=100, pct_start=0.25, div=25.0, final_div=1e4)
    factors = [cycle.factor(s) for s in range(101)]
    assert factors[0] == pytest.approx(1 / 25)
    assert max(factors) == pytest.approx(1.0) and int(np.argmax(factors)) == 25
    assert all(a <= b for a, b in itertools.pairwise(factors[:26]))
    assert all(a >= b for a, b in itertools.pairwise(factors[25:]))
    assert factors[100] == pytest.approx(1 / 25 / 1e4)


def test_suggestion_is_the_steepest_descent() -> None:
    lrs = list(np.logspace(-6, 0, 60))
    # loss flat, falls fastest around 1e-3, then explodes
    losses = [2.0 - 1.5 / (1 + np.exp(-(np.log10(lr) + 3) * 4)) + (5 * (lr - 0.1) if lr > 0.1 else 0) for lr in lrs]
    suggestion = suggest_lr(lrs, losses)
    assert 3e-4 < suggestion < 3e-3


def test_smooth_is_bias_corrected() -> None:
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])
