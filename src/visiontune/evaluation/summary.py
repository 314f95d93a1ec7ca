"""The numbers of an evaluation: metrics.json's accuracy, per-class report, calibration, confusions, unknowns.

Everything here works on tensors of logits and class indices, so it is the same for fine-tuned and
feature-head bundles, and tests can check it against an independent computation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report, confusion_matrix

from visiontune.calibration import Calibration, expected_calibration_error
from visiontune.evaluation.metrics import classification_metrics

TOP_K = (3, 5)


def evaluation_metrics(
    logits: torch.Tensor, targets: torch.Tensor, *, classes: list[str], temperature: float = 1.0
) -> dict[str, Any]:
    """Everything metrics.json reports about a labelled split, from (N, K) logits and (N,) class indices.

    Computed in float64 so the numbers a user compares with scikit-learn agree to the last digit.
    Losses and ECE are given for the raw model and for its temperature-scaled probabilities
    (what predict reports); accuracy is the same for both, as scaling keeps the ranking.

    Example:
        >>> m = evaluation_metrics(logits, targets, classes=["cat", "dog"])  # doctest: +SKIP
        >>> m["accuracy"], m["per_class"]["cat"]["recall"], m["most_confused"][:1]  # doctest: +SKIP
    """
    logits, targets = logits.detach().double().cpu(), targets.detach().long().cpu()
    num_classes, y = len(classes), targets.numpy()
    preds = logits.argmax(dim=1).numpy()
    scaled = logits / temperature
    split = classification_metrics(logits, targets, num_classes=num_classes)
    result: dict[str, Any] = {
        "images": len(y),
        **{k: split[k] for k in ("accuracy", "error_rate", "balanced_accuracy")},
    }
    for k in TOP_K:
        if k < num_classes:  # top-k with k >= classes is always 1
            result[f"top_{k}_accuracy"] = top_k_accuracy(logits, targets, k)
    result["log_loss"] = split["loss"]
    result["log_loss_calibrated"] = float(F.cross_entropy(scaled, targets))
    result["temperature"] = float(temperature)
    result["ece_before"] = expected_calibration_error(logits.softmax(dim=1), targets)
    result["ece_after"] = expected_calibration_error(scaled.softmax(dim=1), targets)
    result.update(per_class_report(y, preds, classes))
    matrix = confusion_matrix(y, preds, labels=list(range(num_classes)))
    result["confusion_matrix"] = matrix.tolist()
    result["most_confused"] = most_confused(matrix, classes)
    return result


def top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Share of images whose class is among the k highest logits."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (N, k)
    return float((top == targets[:, None]).any(dim=1).double().mean())


def per_class_report(y: np.ndarray, preds: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """scikit-learn's classification report as `per_class`, `macro_avg` and `weighted_avg` blocks."""
    report = classification_report(
        y, preds, labels=list(range(len(classes))), target_names=classes, output_dict=True, zero_division=0
    )

    def block(row: dict[str, float]) -> dict[str, float]:
        return {
            "precision": row["precision"],
            "recall": row["recall"],
            "f1": row["f1-score"],
            "support": int(row["support"]),
        }

    return {
        "per_class": {name: block(report[name]) for name in classes},
        "macro_avg": block(report["macro avg"]),
        "weighted_avg": block(report["weighted avg"]),
    }


def most_confused(matrix: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """Off-diagonal cells of the confusion matrix, most frequent first (fastai's `most_confused`)."""
    pairs = [
        {"actual": classes[a], "predicted": classes[p], "count": int(matrix[a, p])}
        for a in range(len(classes))
        for p in range(len(classes))
        if a != p and matrix[a, p] > 0
    ]
    return sorted(pairs, key=lambda row: (-row["count"], row["actual"], row["predicted"]))


def sample_losses(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) cross-entropy of each image: -log p(actual class), from (N, K) probabilities."""
    return -probs.double().gather(1, targets.long()[:, None]).squeeze(1).clamp_min(1e-12).log()


def unknown_summary(
    logits: torch.Tensor, targets: torch.Tensor, calibration: Calibration, *, embeddings: torch.Tensor | None = None
) -> dict[str, Any]:
    """How the bundle's "unknown" threshold treats these labelled images: the share it would withhold.

    `accuracy_answered` is the accuracy on the images above the threshold, the ones predict answers.
    """
    score = calibration.score if embeddings is not None or calibration.score != "knn" else "msp"
    threshold = calibration.threshold(score)
    result: dict[str, Any] = {"score": score, "threshold": threshold}
    if threshold is None:
        result["note"] = "the bundle stores no unknown threshold (it predates calibration, or had nothing to fit on)"
        return result
    answered = ~calibration.is_unknown(logits, score, embeddings=embeddings)
    correct = logits.argmax(dim=1) == targets
    result["flagged"] = float((~answered).double().mean()) if len(answered) else float("nan")
    result["accuracy_answered"] = float(correct[answered].double().mean()) if answered.any() else float("nan")
    return result
