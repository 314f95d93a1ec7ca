"""Calibration fitted on the validation split: a temperature, and thresholds that say "unknown".

A fine-tuned network is over-confident: its top softmax probability is near 1 on inputs it has
never seen the like of (a Food-101 model calls raw rice "fried rice" with 0.97). Two fixes, both
fitted at the end of training on validation logits and stored in the bundle:

- temperature scaling (Guo et al., 2017): logits / T with the T that minimises validation
  negative log-likelihood. One number, the ranking of classes unchanged, so accuracy is too;
  probabilities then mean what they say (expected calibration error before and after is stored);
- an "unknown" threshold on a confidence score: by default the temperature-scaled max softmax
  probability (MSP, Hendrycks & Gimpel, 2017) that keeps `keep` (95%) of the correct validation
  predictions; the energy score (Liu et al., 2020: T * logsumexp(logits / T), higher = more
  familiar) as an option. Both thresholds are stored; predict picks one by name.

Everything here is on tensors of logits, so fine-tuned and feature-head bundles share it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from visiontune.errors import ConfigError

UNKNOWN_SCORES = ("msp", "energy")
DEFAULT_KEEP = 0.95
ECE_BINS = 15
_T_RANGE = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T); 1.0 when there is nothing to fit.

    Nothing to fit: no validation data, one class, or no validation errors (then every smaller T
    scores better and the "optimum" would make every answer certain).

    Optimised over log T (always positive, well scaled) with L-BFGS, as the NLL is smooth and convex
    in 1 / T; clamped to [0.05, 20] so a degenerate validation set can't produce an absurd value.
    """
    # clones: tensors made under inference_mode (the trainer's predictions) can't enter autograd
    logits, targets = logits.detach().float().cpu().clone(), targets.detach().long().cpu().clone()
    if len(targets) == 0 or logits.shape[1] < 2:
        return 1.0
    if bool((logits.argmax(dim=1) == targets).all()):
        return 1.0  # no validation errors: the NLL falls towards T = 0 with no minimum, nothing to fit
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    value = float(log_t.detach().exp())
    if not math.isfinite(value):
        return 1.0
    return min(max(value, _T_RANGE[0]), _T_RANGE[1])


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, *, bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins by count."""
    if len(targets) == 0:
        return float("nan")
    rows = reliability_bins(probs, targets, bins=bins)
    return sum(abs(r["confidence"] - r["accuracy"]) * r["count"] for r in rows if r["count"]) / len(targets)


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, *, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per confidence bin (low, high]: its range, count, mean confidence and accuracy (a reliability diagram's bars)."""
    confidence, predicted = probs.float().max(dim=1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.bucketize(confidence, edges[1:-1])  # bin i holds (edges[i], edges[i + 1]]
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else float("nan"),
                "accuracy": float(correct[members].mean()) if count else float("nan"),
            }
        )
    return rows


def unknown_scores(logits: torch.Tensor, *, temperature: float = 1.0, score: str = "msp") -> torch.Tensor:
    """(N,) confidence that each input is one of the known classes; higher = more familiar.

    "msp": max softmax probability of logits / T (in (0, 1]); "energy": T * logsumexp(logits / T)
    (unbounded; the negative free energy).
    """
    if score not in UNKNOWN_SCORES:
        raise ConfigError(f"unknown score {score!r}: use one of {', '.join(UNKNOWN_SCORES)}")
    scaled = logits.float() / temperature
    if score == "msp":
        return scaled.softmax(dim=1).max(dim=1).values
    return temperature * torch.logsumexp(scaled, dim=1)


def fit_unknown_threshold(
    logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0, score: str = "msp", keep: float = 0.95
) -> float | None:
    """The score below which an input is called unknown: the (1 - keep) quantile over correct predictions.

    So `keep` of the validation images the model gets right stay above it. None when no validation
    prediction is correct (nothing to calibrate on).
    """
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"`keep` must be in (0, 1]. Received: keep={keep!r}")
    correct = logits.argmax(dim=1) == targets
    if not correct.any():
        return None
    values = unknown_scores(logits[correct], temperature=temperature, score=score).double()
    return float(torch.quantile(values, 1.0 - keep, interpolation="lower"))


def calibrate(logits: torch.Tensor, targets: torch.Tensor, *, keep: float = DEFAULT_KEEP) -> dict[str, Any]:
    """The bundle's `calibration` block from validation logits and class indices.

    Example:
        >>> calibration = calibrate(valid_logits, valid_targets)  # doctest: +SKIP
        >>> calibration["temperature"], calibration["unknown"]["thresholds"]["msp"]  # doctest: +SKIP
    """
    logits, targets = logits.detach().float().cpu(), targets.detach().long().cpu()
    temperature = fit_temperature(logits, targets)
    thresholds = {
        name: fit_unknown_threshold(logits, targets, temperature=temperature, score=name, keep=keep)
        for name in UNKNOWN_SCORES
    }
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(logits.softmax(dim=1), targets),
        "ece_after": expected_calibration_error((logits / temperature).softmax(dim=1), targets),
        "nll_before": float(F.cross_entropy(logits, targets)) if len(targets) else float("nan"),
        "nll_after": float(F.cross_entropy(logits / temperature, targets)) if len(targets) else float("nan"),
        "unknown": {"score": "msp", "keep": keep, "thresholds": thresholds},
        "fitted_on": {"split": "valid", "images": len(targets)},
    }


def uncalibrated() -> dict[str, Any]:
    """The calibration block of a model with no validation data: T = 1, no unknown threshold."""
    return {"temperature": 1.0, "unknown": {"score": "msp", "keep": None, "thresholds": {}}}


def unknown_threshold(calibration: dict[str, Any], score: str | None = None) -> tuple[str, float | None]:
    """(score name, threshold) a bundle's calibration block holds; also reads the older flat form."""
    block = calibration.get("unknown") or {}
    name = score or block.get("score") or "msp"
    if name not in UNKNOWN_SCORES:
        raise ConfigError(f"unknown score {name!r}: use one of {', '.join(UNKNOWN_SCORES)}")
    threshold = (block.get("thresholds") or {}).get(name)
    if threshold is None and name == "msp":
        threshold = calibration.get("unknown_threshold")
    return name, threshold
