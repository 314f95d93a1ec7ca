"""fit_heads: every head fits and predicts, and its torch form computes what scikit-learn does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiontune.config import get_monitor
from visiontune.errors import ConfigError, DatasetError
from visiontune.features import HEADS, best_head, fit_head, fit_heads
from visiontune.features.classical import predict_logits
from visiontune.models.fitted import FittedHead, fitted_head


def _pixels(fashion: dict, split: str, classes: tuple[int, ...], per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Real Fashion-MNIST images as 196 features (14x14 means) and labels 0..K-1: cheap, real vectors."""
    images, labels = fashion[f"{split}_images"], fashion[f"{split}_labels"]
    rows = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes])
    x = images[rows].reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(rows), -1) / 255.0
    y = np.searchsorted(np.array(classes), labels[rows])
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def three(fashion: dict) -> tuple[np.ndarray, ...]:
    return (*_pixels(fashion, "train", (0, 2, 6), 40), *_pixels(fashion, "test", (0, 2, 6), 30))


@pytest.mark.parametrize("name", HEADS)
def test_each_head_fits_predicts_and_round_trips(name: str, three: tuple[np.ndarray, ...]) -> None:
    train_x, train_y, test_x, test_y = three
    head, _ = fit_head(name, train_x, train_y, num_classes=3, seed=0)
    logits = predict_logits(head, test_x)
    assert logits.shape == (90, 3) and torch.isfinite(logits).all()
    assert (logits.argmax(1).numpy() == test_y).mean() > 0.6  # shirts, pullovers and tops: hard, but learnt
    twin = fitted_head(head.config())  # what a bundle rebuilds from arch["fitted_head"]
    twin.load_state_dict(head.state_dict(), strict=True)
    torch.testing.assert_close(predict_logits(twin, test_x), logits)


@pytest.mark.parametrize("name", ["logreg", "rf", "svm", "knn"])
@pytest.mark.parametrize("classes", [(0, 2, 6), (5, 9)], ids=["3 classes", "2 classes"])
def test_torch_form_matches_scikit_learn(name: str, classes: tuple[int, ...], fashion: dict) -> None:
    train_x, train_y = _pixels(fashion, "train", classes, 40)
    test_x, _ = _pixels(fashion, "test", classes, 30)
    head, estimator = fit_head(name, train_x, train_y, num_classes=len(classes), seed=0)
    proba = torch.softmax(predict_logits(head, test_x), dim=1).numpy()
    prepared = head.prepare(torch.as_tensor(test_x)).numpy()  # the estimator was fitted on prepared features
    np.testing.assert_allclose(proba, estimator.predict_proba(prepared), atol=2e-5)
    assert (proba.argmax(1) == estimator.predict(prepared)).all()


def test_fit_heads_scores_on_valid_and_picks_the_best(three: tuple[np.ndarray, ...]) -> None:
    train_x, train_y, valid_x, valid_y = three
    seen = []
    results = fit_heads(train_x, train_y, valid_x, valid_y, heads=("knn", "logreg"), on_fit=seen.append)
    assert [r.name for r in results] == [r.name for r in seen] == ["knn", "logreg"]
    for result in results:
        assert isinstance(result.head, FittedHead) and result.fit_s >= 0
        assert set(result.valid) >= {"accuracy", "balanced_accuracy", "macro_f1", "loss"}
        assert result.row()["head"] == result.name
    best = best_head(results)
    assert best.valid["accuracy"] == max(r.valid["accuracy"] for r in results)
    assert best_head(results, get_monitor("valid_loss")).valid["loss"] == min(r.valid["loss"] for r in results)


def test_same_seed_same_heads(three: tuple[np.ndarray, ...]) -> None:
    train_x, train_y, valid_x, _ = three
    for name in ("linear", "mlp", "rf"):
        a, _ = fit_head(name, train_x, train_y, num_classes=3, seed=1)
        b, _ = fit_head(name, train_x, train_y, num_classes=3, seed=1)
        torch.testing.assert_close(predict_logits(a, valid_x), predict_logits(b, valid_x))


def test_bad_requests_say_what_to_do(three: tuple[np.ndarray, ...]) -> None:
    train_x, train_y, valid_x, valid_y = three
    with pytest.raises(ConfigError, match="heads"):
        fit_heads(train_x, train_y, valid_x, valid_y, heads=("xgboost",))
    with pytest.raises(DatasetError, match="class index 3"):
        fit_heads(train_x, train_y, valid_x, valid_y, heads=("knn",), num_classes=4)
