"""What looks wrong, ranked: label errors (cleanlab), outliers, conflicting duplicates, ambiguous images.

- label errors: the images least likely to carry their given label (score 1 - p(given), cleanlab's
  self-confidence ranking), as many as confident learning estimates are wrong (cleanlab's
  `num_label_issues`: the off-diagonal count of the confident joint); suggested label the most
  probable other class. On the demo with 20% of labels flipped this cut-off had precision 0.88 and
  recall 0.89, where `find_label_issues`' own pruned set (prune_by_noise_rate) had 0.76 and 0.92:
  it flags every image the head gets confidently wrong, and Fashion-MNIST has many honest ones
  (shirt / t-shirt, pullover / coat);
- conflicting duplicates: the same or a near-identical image under two labels (the audit's
  duplicate groups): whichever label the model finds less likely for the group is suspect;
- outliers: images far from every class in embedding space (the smallest Mahalanobis distance to a
  class mean, with one shared covariance, in the top principal components: Lee et al. 2018), flagged
  when its robust z-score is above OUTLIER_Z;
- ambiguous: the two most probable classes within AMBIGUOUS_MARGIN of each other, the given label
  one of them (not a label error: a judgement call, or two classes that overlap);
- per class: images, suspected errors and cleanlab's estimated noise rate; class pairs that overlap
  (`find_overlapping_classes`); the overall label health score.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("label_error", "conflicting_duplicate", "outlier", "ambiguous")  # review order: most actionable first
AMBIGUOUS_MARGIN = 0.1
OUTLIER_Z = 5.0
OUTLIER_DIMS = 64


@dataclass(frozen=True)
class Issue:
    """One suspect image: which kind of problem, how sure (0-1, higher is worse), and the model's view."""

    index: int  # position in the cleaned data's samples
    path: Path
    given: str
    suggested: str
    kind: str
    score: float
    top: tuple[tuple[str, float], ...] = ()  # the model's top-3 (label, out-of-fold probability)


@dataclass
class Health:
    """Class-level findings: the per-class table, overlapping pairs, and the overall health score."""

    classes: list[dict[str, Any]] = field(default_factory=list)  # class, images, suspected_errors, noise_rate
    overlaps: list[dict[str, Any]] = field(default_factory=list)  # class_a, class_b, images, joint_probability
    score: float = 1.0  # cleanlab's overall label health: 1 - estimated share of wrong labels
    estimated_errors: int = 0  # cleanlab's estimate of how many labels are wrong


def top_labels(probs: np.ndarray, classes: Sequence[str], k: int = 3) -> list[tuple[tuple[str, float], ...]]:
    order = np.argsort(-probs, axis=1)[:, :k]
    return [tuple((classes[j], round(float(row[j]), 4)) for j in best) for row, best in zip(probs, order, strict=True)]


def label_errors(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flagged (N,) bool, score (N,) = 1 - p(given), suggested (N,) = most probable other class).

    Flagged: the top `num_label_issues` images by score (ties broken by position, so it is stable).
    """
    from cleanlab.count import num_label_issues

    rows = np.arange(len(labels))
    score = 1.0 - probs[rows, labels]
    flagged = np.zeros(len(labels), dtype=bool)
    flagged[np.argsort(-score, kind="stable")[: int(num_label_issues(labels, probs))]] = True
    others = probs.copy()
    others[rows, labels] = -1.0
    return flagged, score, others.argmax(axis=1)


def ambiguous(labels: np.ndarray, probs: np.ndarray, flagged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose top two classes are within AMBIGUOUS_MARGIN and include the given label, their score 1 - margin)."""
    order = np.argsort(-probs, axis=1)
    first, second = order[:, 0], order[:, 1]
    rows = np.arange(len(labels))
    margin = probs[rows, first] - probs[rows, second]
    hit = (margin < AMBIGUOUS_MARGIN) & ((labels == first) | (labels == second)) & ~flagged
    return np.flatnonzero(hit), 1.0 - margin


def outlier_scores(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) robust z-score of each image's smallest Mahalanobis distance to a class mean (shared covariance).

    Features are made unit length (pooled activations vary in scale with the image), projected on
    their top OUTLIER_DIMS principal components, and the covariance is shrunk a little towards the
    identity so a small class can't make it singular.
    """
    from sklearn.utils.extmath import randomized_svd

    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    x = (x - x.mean(axis=0)).astype(np.float32)
    # randomized: O(N D d) where a full eigendecomposition of the (D, D) covariance took 20 s for D = 1,280
    u, s, _ = randomized_svd(x, n_components=min(OUTLIER_DIMS, *x.shape), n_iter=4, random_state=0)
    z = (u * s).astype(np.float64)  # (N, d) principal-component scores
    means = np.stack([z[labels == k].mean(axis=0) for k in range(num_classes)])  # (K, d)
    within = z - means[labels]
    cov = within.T @ within / max(len(z) - num_classes, 1)
    cov += 1e-3 * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    distances = np.stack([(((z - m) @ precision) * (z - m)).sum(axis=1) for m in means], axis=1)  # (N, K)
    nearest = np.sqrt(np.maximum(distances.min(axis=1), 0.0))
    median = np.median(nearest)
    spread = 1.4826 * np.median(np.abs(nearest - median)) or 1.0
    return (nearest - median) / spread


def conflicting_duplicates(
    groups: Sequence[Sequence[int]], labels: np.ndarray, probs: np.ndarray
) -> list[tuple[int, int, float]]:
    """(row, suggested class, score) for each duplicate-group member whose label the group's probabilities favour less.

    The group's images are one picture: its summed probabilities say which of its labels is more likely.
    """
    found = []
    for group in groups:
        rows = list(group)
        if len({int(labels[r]) for r in rows}) < 2:
            continue
        summed = probs[rows].sum(axis=0)
        candidates = {int(labels[r]) for r in rows}
        best = max(candidates, key=lambda k: summed[k])
        share = float(summed[best] / max(summed[list(candidates)].sum(), 1e-12))
        found += [(r, best, share) for r in rows if labels[r] != best]
    return found


def class_health(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], flagged: np.ndarray) -> Health:
    """cleanlab's class-level view: noise rate per class, overlapping pairs, overall health."""
    from cleanlab.dataset import find_overlapping_classes, overall_label_health_score, rank_classes_by_label_quality

    ranked = rank_classes_by_label_quality(labels=labels, pred_probs=probs).set_index("Class Index")
    counts, suspected = Counter(labels.tolist()), Counter(labels[flagged].tolist())
    table = [
        {"class": name, "images": counts.get(k, 0), "suspected_errors": suspected.get(k, 0),
         "noise_rate": round(float(ranked.loc[k, "Label Noise"]), 4) if k in ranked.index else 0.0}
        for k, name in enumerate(classes)
    ]  # fmt: skip
    pairs = find_overlapping_classes(labels=labels, pred_probs=probs)
    overlaps = [
        {"class_a": classes[int(r["Class Index A"])], "class_b": classes[int(r["Class Index B"])],
         "images": int(r["Num Overlapping Examples"]), "joint_probability": round(float(r["Joint Probability"]), 5)}
        for _, r in pairs.iterrows() if int(r["Num Overlapping Examples"]) > 0
    ]  # fmt: skip
    score = float(overall_label_health_score(labels, probs, verbose=False))
    return Health(table, overlaps, round(score, 4), int(flagged.sum()))


def rank_issues(
    paths: Sequence[Path],
    labels: np.ndarray,
    probs: np.ndarray,
    features: np.ndarray,
    classes: Sequence[str],
    *,
    duplicate_groups: Sequence[Sequence[int]] = (),
) -> tuple[list[Issue], Health]:
    """Every suspect, most actionable kind first (KINDS order), then by score; and the class-level health."""
    flagged, error_score, suggested = label_errors(labels, probs)
    top = top_labels(probs, classes)

    def issue(row: int, kind: str, score: float, suggestion: int | None = None) -> Issue:
        guess = classes[int(suggested[row] if suggestion is None else suggestion)]
        return Issue(int(row), Path(paths[row]), classes[labels[row]], guess, kind, round(float(score), 4), top[row])

    issues = [issue(r, "label_error", error_score[r]) for r in np.flatnonzero(flagged)]
    issues += [
        issue(r, "conflicting_duplicate", s, k) for r, k, s in conflicting_duplicates(duplicate_groups, labels, probs)
    ]
    z = outlier_scores(features, labels, len(classes))
    far = np.flatnonzero(z > OUTLIER_Z)
    issues += [issue(r, "outlier", min(z[r] / (2 * OUTLIER_Z), 1.0), probs[r].argmax()) for r in far]
    rows, score = ambiguous(labels, probs, flagged)
    issues += [issue(r, "ambiguous", score[r]) for r in rows]
    issues.sort(key=lambda i: (KINDS.index(i.kind), -i.score, str(i.path)))
    return issues, class_health(labels, probs, classes, flagged)
