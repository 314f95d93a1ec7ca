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

Everything here is on tensors of logits, so fine-tuned and feature-head bundles share it; `Calibration`
is the one object every reader (predict, evaluate, serve, export) goes through. It also carries
what training fitted beyond a temperature: the conformal prediction-set predictor (`conformal`,
see conformal.py) and the feature-space k-NN detector behind the "knn" unknown score (`detector`,
see detector.py; its bank lives in the bundle's detector.safetensors). Bundles from before either
load with None there: no prediction set, and the logit scores only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

from visiontune.config import check_choice
from visiontune.conformal import DEFAULT_COVERAGE, ConformalSets, fit_conformal
from visiontune.detector import DEFAULT_ALPHA, KNNDetector, conformal_threshold
from visiontune.errors import ConfigError

UNKNOWN_SCORES = ("msp", "energy")  # the scores computed from logits alone
FEATURE_SCORES = ("knn",)  # the scores that need the image's embedding (and a fitted detector)
ALL_SCORES = UNKNOWN_SCORES + FEATURE_SCORES
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
    check_choice("unknown_score", score, UNKNOWN_SCORES)
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


@dataclass(frozen=True)
class Calibration:
    """What the validation split taught about a model's confidence: one typed object, fitted once, read everywhere.

    `temperature` divides the logits before the softmax; `thresholds` holds, per unknown score, the
    value below which an input is called unknown (None: no threshold could be fitted); `score` is
    the one `predict` uses unless told otherwise. The ECE/NLL fields are None for a model that was
    never calibrated (a backbone's own classifier, a bundle from before calibration).

    Example:
        >>> cal = Calibration(temperature=2.0, thresholds={"msp": 0.5})
        >>> cal.is_unknown(torch.tensor([[0.0, 0.1], [9.0, 0.0]])).tolist()
        [True, False]
    """

    temperature: float = 1.0
    score: str = "msp"
    thresholds: Mapping[str, float | None] = field(default_factory=dict)
    keep: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    fitted_on: int | None = None  # validation images
    conformal: ConformalSets | None = None  # prediction sets (None: a bundle from before them)
    detector: KNNDetector | None = None  # the "knn" score's training-embedding bank (None: not fitted/loaded)
    detector_info: Mapping[str, Any] | None = None  # bundle.json's description of it (k, bank size, file)

    def __post_init__(self) -> None:
        check_choice("score", self.score, ALL_SCORES)
        for name in self.thresholds:
            check_choice("score", name, ALL_SCORES)
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"`temperature` must be a positive number. Received: temperature={self.temperature!r}")
        object.__setattr__(self, "thresholds", MappingProxyType(dict(self.thresholds)))

    @property
    def fitted(self) -> bool:
        """Whether a temperature was fitted on validation data (older bundles and backbones: no)."""
        return self.ece_before is not None

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, K) temperature-scaled softmax probabilities: what predict reports."""
        return (logits.float() / self.temperature).softmax(dim=1)

    def scores(
        self, logits: torch.Tensor, score: str | None = None, *, embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N,) unknown scores (higher = more familiar) under `score`, the stored one by default.

        "knn" needs the images' `embeddings` (N, D) and a loaded detector.
        """
        name = score or self.score
        if name in FEATURE_SCORES:
            if self.detector is None or embeddings is None:
                raise ConfigError(self.feature_score_missing(name))
            return self.detector.scores(embeddings)
        return unknown_scores(logits, temperature=self.temperature, score=name)

    def feature_score_missing(self, name: str) -> str:
        """Why the feature-space score can't be computed here, and what to do instead."""
        if self.detector is None:
            return f"this bundle has no {name!r} detector (trained before it existed): use --unknown-score msp"
        return f"the {name!r} score needs the images' embeddings, which this model can't give: use --unknown-score msp"

    def threshold(self, score: str | None = None) -> float | None:
        """The threshold of `score` (the stored one by default); None when none was fitted."""
        name = score or self.score
        check_choice("unknown_score", name, ALL_SCORES)
        return self.thresholds.get(name)

    def is_unknown(
        self, logits: torch.Tensor, score: str | None = None, *, embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N,) bool: below the threshold of `score`; all False when there is no threshold."""
        return self.flag(self.scores(logits, score, embeddings=embeddings), score)

    def prediction_sets(self, probs: torch.Tensor, *, coverage: float | None = None) -> torch.Tensor | None:
        """(N, K) bool conformal sets from calibrated probabilities; None for a bundle without conformal data."""
        return None if self.conformal is None else self.conformal.predict(probs, coverage=coverage)

    def flag(self, values: torch.Tensor, score: str | None = None) -> torch.Tensor:
        """(N,) bool for scores already computed (e.g. averaged over TTA views)."""
        threshold = self.threshold(score)
        if threshold is None:
            return torch.zeros(len(values), dtype=torch.bool)
        return values < threshold

    def with_detector(
        self, detector: KNNDetector, valid_embeddings: torch.Tensor, *, alpha: float = DEFAULT_ALPHA
    ) -> Calibration:
        """This calibration plus the k-NN detector, its threshold fitted on validation embeddings, as the default score.

        The threshold is a conformal p-value cut: an image drawn like the validation images is
        flagged unknown with probability at most `alpha` (whether the model gets it right or not).
        """
        threshold = conformal_threshold(detector.scores(valid_embeddings), alpha=alpha)
        info = {**detector.to_dict(), "alpha": alpha, "guarantee": f"at most {alpha:.0%} of in-distribution images"}
        return dataclasses.replace(
            self, score="knn", thresholds={**self.thresholds, "knn": threshold}, detector=detector, detector_info=info
        )

    def to_dict(self) -> dict[str, Any]:
        """bundle.json's `calibration` block (also stored in ONNX metadata)."""
        block: dict[str, Any] = {
            "temperature": self.temperature,
            "unknown": {"score": self.score, "keep": self.keep, "thresholds": dict(self.thresholds)},
        }
        if self.fitted:
            block.update(ece_before=self.ece_before, ece_after=self.ece_after)
            block.update(nll_before=self.nll_before, nll_after=self.nll_after)
            block["fitted_on"] = {"split": "valid", "images": self.fitted_on}
        if self.conformal is not None:
            block["conformal"] = self.conformal.to_dict()
        info = self.detector_info or (self.detector.to_dict() if self.detector is not None else None)
        if info is not None:
            block["unknown"]["detector"] = dict(info)
        return block

    @classmethod
    def from_dict(cls, block: Mapping[str, Any] | None) -> Calibration:
        """Read a `calibration` block: this release's, or the older flat one (`unknown_threshold`)."""
        block = dict(block or {})
        unknown = block.get("unknown") or {}
        thresholds = dict(unknown.get("thresholds") or {})
        if "msp" not in thresholds and block.get("unknown_threshold") is not None:
            thresholds["msp"] = block["unknown_threshold"]
        fitted_on = block.get("fitted_on") or {}
        conformal = block.get("conformal")
        return cls(
            temperature=_number("temperature", block.get("temperature", 1.0)),
            score=unknown.get("score") or "msp",
            thresholds={k: None if v is None else _number(f"thresholds.{k}", v) for k, v in thresholds.items()},
            keep=unknown.get("keep"),
            ece_before=block.get("ece_before"),
            ece_after=block.get("ece_after"),
            nll_before=block.get("nll_before"),
            nll_after=block.get("nll_after"),
            fitted_on=fitted_on.get("images") if isinstance(fitted_on, Mapping) else None,
            conformal=ConformalSets.from_dict(conformal) if isinstance(conformal, Mapping) else None,
            detector_info=unknown.get("detector") if isinstance(unknown.get("detector"), Mapping) else None,
        )


def calibrate(
    logits: torch.Tensor, targets: torch.Tensor, *, keep: float = DEFAULT_KEEP, coverage: float = DEFAULT_COVERAGE
) -> Calibration:
    """Fit the temperature, every logit score's unknown threshold and the conformal sets on validation logits.

    The conformal sets are fitted on the temperature-scaled probabilities predict reports.

    Example:
        >>> calibration = calibrate(valid_logits, valid_targets)  # doctest: +SKIP
        >>> calibration.temperature, calibration.threshold("msp")  # doctest: +SKIP
    """
    logits, targets = logits.detach().float().cpu(), targets.detach().long().cpu()
    temperature = fit_temperature(logits, targets)
    thresholds = {
        name: fit_unknown_threshold(logits, targets, temperature=temperature, score=name, keep=keep)
        for name in UNKNOWN_SCORES
    }
    empty = len(targets) == 0
    return Calibration(
        temperature=temperature,
        thresholds=thresholds,
        keep=keep,
        ece_before=expected_calibration_error(logits.softmax(dim=1), targets),
        ece_after=expected_calibration_error((logits / temperature).softmax(dim=1), targets),
        nll_before=float("nan") if empty else float(F.cross_entropy(logits, targets)),
        nll_after=float("nan") if empty else float(F.cross_entropy(logits / temperature, targets)),
        fitted_on=len(targets),
        conformal=fit_conformal((logits / temperature).softmax(dim=1), targets, coverage=coverage),
    )


def _number(name: str, value: Any) -> float:
    """A stored number as float; a one-line ConfigError for anything else (e.g. a hand-edited bundle.json)."""
    if value is None:
        return 1.0 if name == "temperature" else float("nan")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"calibration `{name}` must be a number. Received: {name}={value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"calibration `{name}` must be a finite number. Received: {name}={value!r}")
    return number
