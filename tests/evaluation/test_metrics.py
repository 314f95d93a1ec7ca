"""Run metrics: scikit-learn's definitions, computed from one confusion matrix."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score, f1_score

from visiontune.evaluation.metrics import classification_metrics


@st.composite
def predictions(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    classes = draw(st.integers(2, 6))
    n = draw(st.integers(1, 40))
    targets = draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    preds = draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    logits = torch.nn.functional.one_hot(torch.tensor(preds), classes).double() * 3.0
    return logits, torch.tensor(targets), classes


@settings(max_examples=200, deadline=None)
@given(predictions())
def test_balanced_accuracy_and_macro_f1_match_scikit_learn(case: tuple[torch.Tensor, torch.Tensor, int]) -> None:
    logits, targets, classes = case  # absent classes, classes never predicted, a single image: all drawn
    preds = logits.argmax(dim=1).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns about classes absent from y_true
        balanced = balanced_accuracy_score(targets.numpy(), preds)
    macro_f1 = f1_score(targets.numpy(), preds, labels=list(range(classes)), average="macro", zero_division=0)
    metrics = classification_metrics(logits, targets, num_classes=classes)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced, abs=1e-12)
    assert metrics["macro_f1"] == pytest.approx(macro_f1, abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(float((preds == targets.numpy()).mean()))


def test_majority_guessing_scores_one_over_classes_balanced() -> None:
    targets = torch.tensor([0] * 90 + [1] * 5 + [2] * 5)
    logits = torch.tensor([[5.0, 0.0, 0.0]]).repeat(100, 1)  # always the majority class
    metrics = classification_metrics(logits, targets, num_classes=3)
    assert metrics["accuracy"] == pytest.approx(0.9)
    assert metrics["balanced_accuracy"] == pytest.approx(1 / 3)
    assert metrics["macro_f1"] == pytest.approx((2 * 90 / 190) / 3)
