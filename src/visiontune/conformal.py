"""Split conformal prediction sets: labels that hold the true class with probability >= coverage.

A top-1 answer with a calibrated probability still says nothing about which other classes are
plausible. A conformal prediction set does, with a guarantee that needs no assumption about the
model: if the validation images and a new image are exchangeable (drawn alike), the set contains
the new image's true class with probability at least `coverage` (Vovk et al., 2005).

The score is APS (adaptive prediction sets, Romano, Sesia & Candes, NeurIPS 2020), optionally
with the RAPS size penalty (Angelopoulos et al., ICLR 2021; `lam` = 0, the default, is APS):

    score(x, y) = (probability mass of the classes ranked at or above y) - u * p_y
                  + lam * max(0, rank(y) - k_reg)

On validation, qhat is the ceil((n + 1) * coverage)-th smallest score of the true labels; a new
image's set is every label whose score is <= qhat. Coverage is then >= `coverage` and, the scores
being continuous, below `coverage + 1 / (n + 1)`.

`u` is the randomisation. Randomised (the default): u is uniform in [0, 1) per image, which makes
coverage exact instead of conservative; it is drawn from a hash of the image's rounded
log-probabilities, so the same image gets the same set on every call and on either backend (validity
only needs u to be a function of the image: the scores stay exchangeable). A randomised set may be
empty for a very confident image (the top label alone already carries more than qhat of the mass
once u is applied): that is rare and means "no label needed at this coverage"; callers show the
top-1 next to it. Non-randomised (u = 1): the label that crosses qhat is always included
(MAPIE's `include_last_label=True`): never empty, coverage conservative (often several points
above the target).

Mondrian (class-conditional, Vovk 2012): with at least `MONDRIAN_MIN` validation images in every
class, each label y gets its own qhat from the validation images of class y, so coverage holds
for every class, not just on average over classes. The validation scores are stored (sorted), so
any coverage can be asked for at prediction time without refitting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from visiontune.errors import ConfigError

DEFAULT_COVERAGE = 0.9
MONDRIAN_MIN = 50  # per-class qhat from 50 images: its coverage varies by about +-4 points (sd) at 90%
METHODS = ("aps", "raps")
_HASH_DECIMALS = 3  # log-probabilities are rounded this far before hashing: torch and ONNX agree far closer


def check_coverage(coverage: float) -> float:
    """`coverage` as a float in (0, 1); a ConfigError otherwise."""
    if not (isinstance(coverage, int | float) and math.isfinite(coverage) and 0.0 < coverage < 1.0):
        raise ConfigError(f"`coverage` must be between 0 and 1 (e.g. 0.9). Received: coverage={coverage!r}")
    return float(coverage)


def tie_breaks(probs: torch.Tensor) -> torch.Tensor:
    """(N,) a uniform number in [0, 1) per row, a deterministic function of its rounded log-probabilities.

    Log-probabilities, not probabilities: a confident row's probabilities round to (1, 0, ..., 0)
    like every other confident row's, which would give them all one u; their logs stay distinct.
    Rounded to `_HASH_DECIMALS` (backends differ by ~1e-6), then folded through splitmix64's
    finaliser (a well-mixed 64-bit hash), vectorised over the rows.
    """
    logs = probs.detach().double().cpu().clamp_min(1e-300).log().numpy()
    grid = np.round(logs * 10**_HASH_DECIMALS).astype(np.int64).view(np.uint64)  # (N, K), two's complement
    state = np.full(len(grid), 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps around, as the hash intends
        for column in grid.T:
            state = _mix64(state ^ column)
    return torch.from_numpy((state >> np.uint64(11)).astype(np.float64) / 2.0**53)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function (Steele, Lea & Flood, 2014) on uint64 arrays."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def label_scores(probs: torch.Tensor, u: torch.Tensor, *, lam: float = 0.0, k_reg: int = 0) -> torch.Tensor:
    """(N, K) the APS/RAPS score of every label of every row (lower = more plausible).

    `probs` (N, K) probabilities, `u` (N,) in [0, 1]: the randomisation (1 = non-randomised).
    """
    probs = probs.detach().double().cpu()
    order = probs.argsort(dim=1, descending=True, stable=True)  # (N, K) labels, most probable first
    sorted_probs = probs.gather(1, order)
    ranked = sorted_probs.cumsum(dim=1) - u.double().view(-1, 1) * sorted_probs  # (N, K) in rank order
    if lam:
        ranks = torch.arange(1, probs.shape[1] + 1, dtype=torch.float64)
        ranked = ranked + lam * (ranks - k_reg).clamp(min=0)
    return torch.empty_like(ranked).scatter_(1, order, ranked)  # back to label order


def conformal_quantile(scores: Sequence[float] | np.ndarray, coverage: float) -> float:
    """The ceil((n + 1) * coverage)-th smallest score; +inf when n is too small (every label is then kept)."""
    values = np.sort(np.asarray(scores, dtype=np.float64))
    rank = math.ceil((len(values) + 1) * coverage)
    return float(values[rank - 1]) if rank <= len(values) else math.inf


@dataclass(frozen=True)
class ConformalSets:
    """A fitted split-conformal set predictor: the sorted validation scores, globally and per class.

    Example:
        >>> sets = fit_conformal(valid_probs, valid_targets)  # doctest: +SKIP
        >>> sets.predict(test_probs, coverage=0.9)  # (N, K) bool: label k in row n's set  # doctest: +SKIP
    """

    scores: tuple[float, ...]  # every validation image's score of its true label, sorted
    class_scores: tuple[tuple[float, ...], ...]  # per class, sorted
    method: str = "aps"
    randomized: bool = True
    lam: float = 0.0
    k_reg: int = 0
    coverage: float = DEFAULT_COVERAGE  # the default when a caller asks for none
    mondrian: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"conformal `method` must be one of {', '.join(METHODS)}. Received: {self.method!r}")
        check_coverage(self.coverage)

    @property
    def num_classes(self) -> int:
        return len(self.class_scores)

    def thresholds(self, coverage: float | None = None) -> torch.Tensor:
        """(K,) qhat per candidate label: one shared value, or each class's own (Mondrian)."""
        coverage = check_coverage(self.coverage if coverage is None else coverage)
        if self.mondrian:
            return torch.tensor([conformal_quantile(s, coverage) for s in self.class_scores], dtype=torch.float64)
        return torch.full((self.num_classes,), conformal_quantile(self.scores, coverage), dtype=torch.float64)

    def u(self, probs: torch.Tensor) -> torch.Tensor:
        """(N,) the randomisation of each row: hashed uniforms, or 1 (non-randomised)."""
        return tie_breaks(probs) if self.randomized else torch.ones(len(probs), dtype=torch.float64)

    def label_scores(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, K) the score of every label under this predictor's method and randomisation."""
        return label_scores(probs, self.u(probs), lam=self.lam, k_reg=self.k_reg)

    def predict(self, probs: torch.Tensor, *, coverage: float | None = None) -> torch.Tensor:
        """(N, K) bool: whether each label is in each row's prediction set at `coverage`."""
        if probs.shape[1] != self.num_classes:
            raise ConfigError(f"conformal sets were fitted for {self.num_classes} classes, not {probs.shape[1]}")
        return self.label_scores(probs) <= self.thresholds(coverage).view(1, -1)

    def to_dict(self) -> dict[str, Any]:
        """The `conformal` block of the bundle's calibration (the sorted validation scores per class)."""
        return {
            "method": self.method,
            "randomized": self.randomized,
            "lam": self.lam,
            "k_reg": self.k_reg,
            "coverage": self.coverage,
            "mondrian": self.mondrian,
            "fitted_on": len(self.scores),
            "class_scores": [list(s) for s in self.class_scores],
        }

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> ConformalSets:
        try:
            class_scores = tuple(tuple(sorted(float(v) for v in s)) for s in block["class_scores"])
            return cls(
                scores=tuple(sorted(v for s in class_scores for v in s)),
                class_scores=class_scores,
                method=str(block.get("method", "aps")),
                randomized=bool(block.get("randomized", True)),
                lam=float(block.get("lam", 0.0)),
                k_reg=int(block.get("k_reg", 0)),
                coverage=float(block.get("coverage", DEFAULT_COVERAGE)),
                mondrian=bool(block.get("mondrian", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"calibration `conformal` block is malformed ({exc}); retrain to refit it") from None


def fit_conformal(
    probs: torch.Tensor,
    targets: torch.Tensor,
    *,
    coverage: float = DEFAULT_COVERAGE,
    randomized: bool = True,
    lam: float = 0.0,
    k_reg: int = 0,
    mondrian_min: int = MONDRIAN_MIN,
) -> ConformalSets | None:
    """Fit on validation probabilities (N, K) and class indices (N,); None without validation images.

    Mondrian (per-class) when every class has at least `mondrian_min` validation images.
    """
    if len(targets) == 0:
        return None
    probs, targets = probs.detach().double().cpu(), targets.detach().long().cpu()
    u = tie_breaks(probs) if randomized else torch.ones(len(probs), dtype=torch.float64)
    true = label_scores(probs, u, lam=lam, k_reg=k_reg).gather(1, targets.view(-1, 1)).squeeze(1)
    per_class = tuple(tuple(sorted(true[targets == c].tolist())) for c in range(probs.shape[1]))
    return ConformalSets(
        scores=tuple(sorted(true.tolist())),
        class_scores=per_class,
        method="raps" if lam else "aps",
        randomized=randomized,
        lam=lam,
        k_reg=k_reg,
        coverage=check_coverage(coverage),
        mondrian=min(len(s) for s in per_class) >= mondrian_min,
    )
