"""Classification metrics from logits: the numbers training monitors and evaluation reports."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, *, num_classes: int) -> dict[str, float]:
    """loss (cross-entropy), accuracy, balanced accuracy (mean per-class recall) and error rate.

    Balanced accuracy is what imbalanced data should be judged on: predicting the majority
    class everywhere scores 1 / num_classes, not the majority's share.
    """
    if len(targets) == 0:
        return {
            "loss": float("nan"),
            "accuracy": float("nan"),
            "balanced_accuracy": float("nan"),
            "error_rate": float("nan"),
        }
    logits = logits.float()
    preds = logits.argmax(dim=1)
    accuracy = float((preds == targets).float().mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from a small valid split is fine here
        balanced = float(balanced_accuracy_score(targets.numpy(), preds.numpy()))
    return {
        "loss": float(F.cross_entropy(logits, targets)),
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "error_rate": 1.0 - accuracy,
    }


def imbalance_ratio(counts: list[int] | np.ndarray) -> float:
    """Largest class count over the smallest (inf when a class is empty)."""
    counts = np.asarray(counts)
    return float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")


def split_metrics(
    split: str, logits: torch.Tensor, targets: torch.Tensor, num_classes: int, temperature: float = 1.0
) -> dict[str, float]:
    """A split's metrics as run results name them: valid_loss, valid_accuracy, ..., valid_ece.

    The loss is the raw model's (what training monitored); `{split}_ece` is the expected
    calibration error of the temperature-scaled probabilities that predict reports.
    """
    from visiontune.evaluation.calibration import expected_calibration_error

    metrics = {f"{split}_{k}": v for k, v in classification_metrics(logits, targets, num_classes=num_classes).items()}
    metrics[f"{split}_ece"] = expected_calibration_error((logits.float() / temperature).softmax(dim=1), targets)
    return metrics
