"""Error bars for evaluation numbers, and whether two models really differ.

On 100 test images an accuracy of 0.89 is anything from about 0.81 to 0.94: printing it to four
digits without an interval invites reading noise as progress. Here:

- `wilson_interval`: the Wilson score interval of a binomial proportion (accuracy, one class's
  recall). Unlike the normal approximation it stays inside [0, 1] and keeps close to its nominal
  coverage for small n and rates near 0 or 1 (Brown, Cai & DasGupta, 2001);
- `bootstrap_interval`: a percentile bootstrap over images (seeded) for statistics that are not
  one proportion, such as balanced accuracy (the mean of the per-class recalls);
- `mcnemar`: McNemar's exact test on two models' per-image correctness on the same images: only
  the images where they disagree carry information, and under "no difference" each such image is
  a fair coin (two-sided binomial p-value);
- `within_noise`: whether a score is inside the 95% interval of the best one (for tune's table).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import torch
from scipy.stats import binomtest

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 1000


def wilson_interval(successes: int, n: int, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) of the Wilson score interval for `successes` out of `n`; (nan, nan) when n is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    statistic: Callable[[torch.Tensor], float],
    n: int,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """(low, high) percentile interval of `statistic(indices)` over `samples` resamples of range(n) with replacement."""
    if n <= 0:
        return float("nan"), float("nan")
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor([statistic(torch.randint(n, (n,), generator=generator)) for _ in range(samples)])
    values = values[~values.isnan()]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2
    low, high = torch.quantile(values.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return float(low), float(high)


def balanced_accuracy(predicted: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """The mean recall over the classes present in `targets`."""
    present = torch.bincount(targets, minlength=num_classes)
    hits = torch.bincount(targets[predicted == targets], minlength=num_classes)
    seen = present > 0
    return float((hits[seen].double() / present[seen]).mean()) if seen.any() else float("nan")


def accuracy_intervals(
    predicted: torch.Tensor, targets: torch.Tensor, *, classes: list[str], seed: int = 0
) -> dict[str, Any]:
    """95% intervals of accuracy (Wilson), balanced accuracy (bootstrap) and each class's recall (Wilson)."""
    predicted, targets = predicted.long().cpu(), targets.long().cpu()
    correct = predicted == targets
    k = len(classes)
    recall = {}
    for index, name in enumerate(classes):
        members = targets == index
        recall[name] = list(wilson_interval(int(correct[members].sum()), int(members.sum())))
    balanced = bootstrap_interval(
        lambda rows: balanced_accuracy(predicted[rows], targets[rows], k), len(targets), seed=seed
    )
    return {
        "confidence": CONFIDENCE,
        "accuracy": list(wilson_interval(int(correct.sum()), len(correct))),
        "accuracy_method": "wilson",
        "balanced_accuracy": list(balanced),
        "balanced_accuracy_method": f"percentile bootstrap, {BOOTSTRAP_SAMPLES} resamples of the images, seed {seed}",
        "recall": recall,
        "recall_method": "wilson",
    }


def mcnemar(correct_a: torch.Tensor, correct_b: torch.Tensor) -> dict[str, Any]:
    """McNemar's exact test: do two models' per-image correctness on the same images differ?

    `only_a` / `only_b`: images only that model got right. p-value: two-sided exact binomial
    on the discordant images (1.0 when there are none).
    """
    a, b = correct_a.bool().cpu(), correct_b.bool().cpu()
    if a.shape != b.shape:
        raise ValueError(f"McNemar needs both models' answers on the same images: {len(a)} vs {len(b)}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return {"images": len(a), "only_a": only_a, "only_b": only_b, "p_value": p, "significant": p < 1 - CONFIDENCE}


def within_noise(score: float, best: float, n: int) -> bool:
    """Whether a proportion `score` lies inside the 95% Wilson interval of `best`, both measured on n images."""
    if n <= 0 or not (math.isfinite(score) and math.isfinite(best)):
        return False
    low, high = wilson_interval(round(best * n), n)
    return low <= score <= high


def set_coverage(calibration: Any, logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """How the bundle's conformal sets did on these labelled images: coverage (with its interval) and sizes."""
    if calibration.conformal is None:
        return {"note": "the bundle has no conformal data (trained before prediction sets); retrain for them"}
    sets = calibration.prediction_sets(calibration.probabilities(logits))
    hits = sets.gather(1, targets.long().view(-1, 1)).squeeze(1)
    sizes = sets.sum(dim=1).double()
    per_class = {}
    for index, name in enumerate(classes):
        members = targets == index
        if members.any():
            rate = float(hits[members].double().mean())
            per_class[name] = {"coverage": rate, "interval": list(wilson_interval(int(hits[members].sum()),
                                                                                  int(members.sum())))}  # fmt: skip
    return {
        "target": calibration.conformal.coverage,
        "mondrian": calibration.conformal.mondrian,
        "coverage": float(hits.double().mean()) if len(hits) else float("nan"),
        "interval": list(wilson_interval(int(hits.sum()), len(hits))),
        "mean_size": float(sizes.mean()) if len(sizes) else float("nan"),
        "single": float((sizes == 1).double().mean()) if len(sizes) else float("nan"),
        "empty": float((sizes == 0).double().mean()) if len(sizes) else float("nan"),
        "per_class": per_class,
    }
