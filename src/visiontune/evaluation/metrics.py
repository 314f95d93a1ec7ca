"""Classification metrics from logits: the numbers training monitors and evaluation reports.

Run metrics carry their split in their name (`valid_accuracy`, `test_loss`): epoch rows,
results.json, bundles, the runs table and tune all use these names. A `Monitor` is such a name
plus the direction that is better, stated once here instead of guessed from the name.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from visiontune.calibration import expected_calibration_error
from visiontune.config import Monitor, get_monitor

SPLIT_METRICS = ("loss", "accuracy", "balanced_accuracy", "error_rate", "macro_f1")  # each run split's, + ece


def auto_monitor(imbalance: float) -> Monitor:
    """Accuracy, or balanced accuracy when the largest class has over 1.5x the images of the smallest."""
    return get_monitor("valid_balanced_accuracy" if imbalance > 1.5 else "valid_accuracy")


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, *, num_classes: int) -> dict[str, float]:
    """loss (cross-entropy), accuracy, balanced accuracy (mean per-class recall), error rate, macro F1.

    Balanced accuracy is what imbalanced data should be judged on: predicting the majority
    class everywhere scores 1 / num_classes, not the majority's share. Computed from one confusion
    matrix, as scikit-learn defines them (tests compare), without importing it into every run.
    """
    if len(targets) == 0:
        return dict.fromkeys(SPLIT_METRICS, float("nan"))
    logits = logits if logits.dtype == torch.float64 else logits.float()  # evaluation's float64 stays
    preds = logits.argmax(dim=1)
    accuracy = float((preds == targets).double().mean())
    counts = confusion_counts(targets, preds, num_classes).double()
    hits, actual, predicted = counts.diagonal(), counts.sum(dim=1), counts.sum(dim=0)
    present = actual > 0  # a class absent from a small valid split is left out of the mean recall
    f1 = 2 * hits / (actual + predicted).clamp_min(1)  # 0 for a class neither present nor predicted
    return {
        "loss": float(F.cross_entropy(logits, targets)),
        "accuracy": accuracy,
        "balanced_accuracy": float((hits[present] / actual[present]).mean()),
        "error_rate": 1.0 - accuracy,
        "macro_f1": float(f1.mean()),
    }


def confusion_counts(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts: rows the true class, columns the predicted one."""
    return torch.bincount(targets * num_classes + preds, minlength=num_classes**2).reshape(num_classes, -1)


def imbalance_ratio(counts: list[int] | np.ndarray) -> float:
    """Largest class count over the smallest (inf when a class is empty)."""
    counts = np.asarray(counts)
    return float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")


def split_metrics(
    split: str, logits: torch.Tensor, targets: torch.Tensor, num_classes: int, temperature: float = 1.0
) -> dict[str, float]:
    """A split's metrics as run results name them: valid_loss, valid_accuracy, ..., valid_macro_f1, valid_ece.

    The loss is the raw model's (what training monitored); `{split}_ece` is the expected
    calibration error of the temperature-scaled probabilities that predict reports.
    """
    metrics = {f"{split}_{k}": v for k, v in classification_metrics(logits, targets, num_classes=num_classes).items()}
    metrics[f"{split}_ece"] = expected_calibration_error((logits.float() / temperature).softmax(dim=1), targets)
    return metrics
