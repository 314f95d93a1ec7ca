"""metrics.json's numbers and the OOD figures against independent numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiontune.calibration import Calibration
from visiontune.evaluation.ood import ood_metrics
from visiontune.evaluation.summary import evaluation_metrics, most_confused, unknown_summary

CLASSES = [f"c{i}" for i in range(10)]


def _data(n: int = 400, k: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are right about 60% of the time, so every metric has something to count."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) * 2
    logits[np.arange(n), targets] += 2.5
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(targets)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = (confidence > low) & (confidence <= high) if b else confidence <= high
        if members.any():
            total += abs(confidence[members].mean() - (predicted[members] == y[members]).mean()) * members.mean()
    return total


def test_metrics_equal_an_independent_computation() -> None:
    logits, targets = _data()
    x, y = logits.double().numpy(), targets.numpy()
    m = evaluation_metrics(logits, targets, classes=CLASSES, temperature=1.7)
    pred = x.argmax(axis=1)
    assert m["images"] == len(y)
    assert m["accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert m["error_rate"] == pytest.approx(1 - np.mean(pred == y), abs=1e-12)
    recalls = [np.mean(pred[y == c] == c) for c in range(10)]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-12)
    order = np.argsort(-x, axis=1)
    for k in (3, 5):
        assert m[f"top_{k}_accuracy"] == pytest.approx(np.mean([y[i] in order[i, :k] for i in range(len(y))]))
    assert m["log_loss"] == pytest.approx(-_log_softmax(x)[np.arange(len(y)), y].mean(), rel=1e-6)
    assert m["log_loss_calibrated"] == pytest.approx(-_log_softmax(x / 1.7)[np.arange(len(y)), y].mean(), rel=1e-6)
    assert m["ece_before"] == pytest.approx(_ece(np.exp(_log_softmax(x)), y), abs=1e-5)
    assert m["ece_after"] == pytest.approx(_ece(np.exp(_log_softmax(x / 1.7)), y), abs=1e-5)
    assert m["ece_after"] != pytest.approx(m["ece_before"], abs=1e-4)
    for c, name in enumerate(CLASSES):
        tp = np.sum((pred == c) & (y == c))
        precision, recall = tp / np.sum(pred == c), tp / np.sum(y == c)
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
        assert row["support"] == np.sum(y == c)
    matrix = np.zeros((10, 10), dtype=int)
    np.add.at(matrix, (y, pred), 1)
    assert m["confusion_matrix"] == matrix.tolist()
    assert m["macro_avg"]["recall"] == pytest.approx(m["balanced_accuracy"])


def test_top_k_is_left_out_when_classes_do_not_allow_it() -> None:
    logits, targets = _data(k=4)
    m = evaluation_metrics(logits, targets, classes=CLASSES[:4])
    assert "top_3_accuracy" in m and "top_5_accuracy" not in m
    m = evaluation_metrics(logits[:, :3], targets % 3, classes=CLASSES[:3])
    assert "top_3_accuracy" not in m


def test_most_confused_counts_off_diagonal_pairs_most_first() -> None:
    matrix = np.array([[5, 2, 0], [7, 1, 1], [0, 2, 9]])
    assert most_confused(matrix, ["a", "b", "c"]) == [
        {"actual": "b", "predicted": "a", "count": 7},
        {"actual": "a", "predicted": "b", "count": 2},
        {"actual": "c", "predicted": "b", "count": 2},
        {"actual": "b", "predicted": "c", "count": 1},
    ]


def test_unknown_summary_counts_images_below_the_threshold() -> None:
    logits, targets = _data()
    calibration = Calibration(temperature=1.3, thresholds={"msp": 0.6})
    probs = np.exp(_log_softmax(logits.double().numpy() / 1.3))
    answered = probs.max(axis=1) >= 0.6
    result = unknown_summary(logits, targets, calibration)
    assert result["flagged"] == pytest.approx(1 - answered.mean())
    correct = probs.argmax(axis=1) == targets.numpy()
    assert result["accuracy_answered"] == pytest.approx(correct[answered].mean())
    assert unknown_summary(logits, targets, Calibration())["threshold"] is None


def _auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(known score > unknown score) + half the ties: the Mann-Whitney form of the AUROC."""
    greater = (known[:, None] > unknown[None, :]).mean()
    ties = (known[:, None] == unknown[None, :]).mean()
    return float(greater + 0.5 * ties)


def test_ood_auroc_and_flagged_shares() -> None:
    known, _ = _data(n=300)
    unknown = torch.randn(120, 10)  # flat logits: low confidence
    calibration = Calibration(temperature=0.8, score="energy", thresholds={"msp": 0.5, "energy": 2.0})
    result = ood_metrics(known, unknown, calibration)
    k, u = known.double().numpy() / 0.8, unknown.double().numpy() / 0.8
    msp = [np.exp(_log_softmax(x)).max(axis=1) for x in (k, u)]
    energy = [0.8 * np.log(np.exp(x).sum(axis=1)) for x in (k, u)]
    assert result["score"] == "energy" and result["images"] == 120 and result["in_distribution_images"] == 300
    assert result["auroc"] == pytest.approx(_auroc(*energy), abs=1e-9)
    assert result["auroc_by_score"]["msp"] == pytest.approx(_auroc(*msp), abs=1e-9)
    assert result["auroc"] > 0.8  # separable by construction
    assert result["flagged_ood"] == pytest.approx(np.mean(energy[1] < 2.0))
    assert result["flagged_in"] == pytest.approx(np.mean(energy[0] < 2.0))


def test_ood_without_a_threshold_still_has_an_auroc() -> None:
    known, _ = _data(n=50)
    result = ood_metrics(known, torch.zeros(20, 10), Calibration())
    assert result["threshold"] is None and result["flagged_ood"] is None and result["flagged_in"] is None
    assert 0.5 < result["auroc"] <= 1.0
