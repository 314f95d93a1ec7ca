"""Error bars: intervals hold the true rate about as often as they say, and McNemar by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiontune.evaluation.intervals import (
    accuracy_intervals,
    balanced_accuracy,
    bootstrap_interval,
    mcnemar,
    wilson_interval,
    within_noise,
)


def test_wilson_by_hand() -> None:
    low, high = wilson_interval(89, 100)  # textbook value: (0.8137, 0.9375)
    assert (low, high) == pytest.approx((0.8137, 0.9375), abs=5e-4)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(wilson_interval(0, 0)[0])


@pytest.mark.parametrize(("rate", "n"), [(0.5, 40), (0.9, 100), (0.97, 300)])
def test_wilson_covers_the_true_rate_at_about_95_percent(rate: float, n: int) -> None:
    draws = np.random.default_rng(0).binomial(n, rate, size=3000)
    held = np.mean([low <= rate <= high for low, high in (wilson_interval(int(k), n) for k in draws)])
    assert 0.925 <= held <= 0.975


def test_bootstrap_balanced_accuracy_covers_the_truth() -> None:
    """Simulated test sets from known per-class recalls: the interval holds the true balanced accuracy ~95%."""
    rng = np.random.default_rng(1)
    recalls = np.array([0.95, 0.8, 0.6])
    held = []
    for _ in range(60):
        targets = torch.as_tensor(rng.integers(0, 3, size=300))
        right = torch.as_tensor(rng.random(300) < recalls[targets.numpy()])
        predicted = torch.where(right, targets, (targets + 1) % 3)

        def statistic(
            rows: torch.Tensor, predicted: torch.Tensor = predicted, targets: torch.Tensor = targets
        ) -> float:
            return balanced_accuracy(predicted[rows], targets[rows], 3)

        low, high = bootstrap_interval(statistic, 300, samples=300, seed=int(rng.integers(1000)))
        held.append(low <= recalls.mean() <= high)
    assert 0.85 <= np.mean(held) <= 1.0


def test_accuracy_intervals_block() -> None:
    targets = torch.tensor([0] * 50 + [1] * 50)
    predicted = torch.cat([torch.zeros(45), torch.ones(30), torch.zeros(25)]).long()
    block = accuracy_intervals(predicted, targets, classes=["a", "b"])
    assert block["accuracy"][0] < 0.75 < block["accuracy"][1]
    assert block["recall"]["a"][0] < 0.9 < block["recall"]["a"][1]
    assert block["balanced_accuracy"][0] < 0.75 < block["balanced_accuracy"][1]


def test_mcnemar_by_hand() -> None:
    a = torch.tensor([True] * 10 + [True] * 80 + [False] * 10)
    b = torch.tensor([False] * 10 + [True] * 80 + [False] * 10)
    result = mcnemar(a, b)
    assert (result["only_a"], result["only_b"]) == (10, 0)
    assert result["p_value"] == pytest.approx(2 * 0.5**10)  # exact two-sided binomial
    assert result["significant"]
    same = mcnemar(a, a)
    assert same["p_value"] == 1.0 and not same["significant"]
    assert not mcnemar(torch.tensor([True, False] * 5), torch.tensor([False, True] * 5))["significant"]


def test_within_noise() -> None:
    assert within_noise(0.88, 0.9, 200)  # 2 points on 200 images: noise
    assert not within_noise(0.80, 0.9, 200)
    assert not within_noise(0.88, 0.9, 0)
