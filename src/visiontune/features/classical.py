"""`fit_heads`: classical classifiers fitted on cached features, each turned into a torch `FittedHead`.

| head   | model                                                      | input                |
|--------|------------------------------------------------------------|----------------------|
| logreg | scikit-learn LogisticRegression, lbfgs, C=0.1, tol=1e-3    | centred, scaled      |
| rf     | scikit-learn RandomForestClassifier, 200 trees             | as is (tree splits)  |
| svm    | SVC (RBF, gamma="scale") + CalibratedClassifierCV(method="temperature") | centred, scaled |
| knn    | KNeighborsClassifier, 10 neighbours, weights 1 / distance  | unit length (cosine) |
| linear | torch linear probe: AdamW, 20 epochs, label smoothing 0.1  | centred, scaled      |
| mlp    | torch 512-unit ReLU layer, dropout 0.5, 15 epochs          | centred, scaled      |

Every head is scored through its torch form (`visiontune.models.fitted`), the code the bundle runs,
so the table printed after a run is what predict will do; the tests check each torch form
against scikit-learn's own `predict_proba`. The estimators themselves are never saved (their arrays
are, as buffers: see `visiontune.models.fitted`); `HeadResult.estimator` keeps them for the caller.

`DEFAULT_HEADS` (logreg, knn, linear) were chosen by measuring all six on the Fashion-MNIST subset
(bench/RESULTS.md, "features"): svm and mlp score like logreg and linear at 6-12x their
fit time, rf is slower and worse, and k-NN costs nothing to fit (a yardstick for the others).
Name the others with `heads=` / `--heads` when they are worth it.

SVC's own `probability=True` (Platt scaling per pair, pairwise coupling) is deprecated in
scikit-learn 1.9 in favour of `CalibratedClassifierCV(SVC(), ensemble=False)`; temperature
scaling keeps predict equal to the argmax of the probabilities (the coupling does not) and has a
one-line torch form.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import joblib
import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from visiontune.config import FEATURE_HEADS, Monitor, check_choice, get_monitor
from visiontune.errors import DatasetError
from visiontune.evaluation.metrics import classification_metrics
from visiontune.models.fitted import FittedHead, ForestHead, KNNHead, LinearHead, MLPHead, SVMHead
from visiontune.system import available_cpus

log = logging.getLogger(__name__)

HEADS = FEATURE_HEADS
DEFAULT_HEADS = ("logreg", "knn", "linear")


@dataclass
class HeadResult:
    """One fitted head: its torch form, validation scores and fit time (seconds)."""

    name: str
    head: FittedHead
    fit_s: float
    valid: dict[str, float] = field(default_factory=dict)  # loss, accuracy, balanced_accuracy, error_rate, macro_f1
    estimator: Any = None  # the scikit-learn estimator (never saved), fitted on `head.prepare(features)`

    def row(self) -> dict[str, Any]:
        """A flat row for heads.csv and the CLI's table."""
        return {"head": self.name, **{k: round(v, 6) for k, v in self.valid.items()}, "fit_s": round(self.fit_s, 3)}


def fit_heads(
    train_x: np.ndarray,
    train_y: np.ndarray,
    valid_x: np.ndarray,
    valid_y: np.ndarray,
    *,
    heads: Sequence[str] = DEFAULT_HEADS,
    num_classes: int | None = None,
    seed: int = 42,
    n_jobs: int | None = None,
    on_fit: Callable[[HeadResult], None] | None = None,
) -> list[HeadResult]:
    """Fit each named head on (train_x, train_y) and score it on (valid_x, valid_y).

    `train_x` is (N, D) features, `train_y` (N,) class indices 0..K-1. `n_jobs` defaults to every
    core. `on_fit` is called after each head (e.g. to print a row as soon as it is known).

    Example:
        >>> results = fit_heads(xtr, ytr, xva, yva, heads=("logreg", "knn"))  # doctest: +SKIP
        >>> best_head(results).name, results[0].valid["accuracy"]  # doctest: +SKIP
    """
    for name in heads:
        check_choice("heads", name, HEADS)
    num_classes = num_classes or int(train_y.max()) + 1
    _check_labels(train_y, num_classes)
    results = []
    for name in heads:
        started = time.perf_counter()
        head, estimator = fit_head(name, train_x, train_y, num_classes=num_classes, seed=seed, n_jobs=n_jobs)
        result = HeadResult(name, head, time.perf_counter() - started, estimator=estimator)
        result.valid = score(head, valid_x, valid_y, num_classes=num_classes)
        log.info("%s: valid accuracy %.4f, fit %.1f s", name, result.valid["accuracy"], result.fit_s)
        if on_fit:
            on_fit(result)
        results.append(result)
    return results


def fit_head(
    name: str, x: np.ndarray, y: np.ndarray, *, num_classes: int, seed: int = 42, n_jobs: int | None = None
) -> tuple[FittedHead, Any]:
    """(torch form, scikit-learn estimator or None) of one head fitted on (x, y).

    The estimator takes features as the torch form prepares them: `estimator.predict(head.prepare(x))`.
    """
    check_choice("heads", name, HEADS)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    torch.manual_seed(seed)  # the torch heads' initial weights
    with single_threaded():
        return _FITTERS[name](x, y, num_classes, seed, n_jobs or available_cpus())


@contextmanager
def single_threaded() -> Iterator[None]:
    """One BLAS / OpenMP / torch thread inside; parallel heads use their own n_jobs workers instead.

    On these small problems threads mostly wait for each other, and on a busy machine spin against
    its other work (measured in bench/RESULTS.md: 34.8 s with 2 threads, 0.5 s with 1).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def score(head: FittedHead, x: np.ndarray, y: np.ndarray, *, num_classes: int) -> dict[str, float]:
    """Loss, accuracy, balanced accuracy, error rate and macro F1 of `head` on features `x`."""
    return score_logits(predict_logits(head, x), y, num_classes=num_classes)


def score_logits(logits: torch.Tensor, y: np.ndarray, *, num_classes: int) -> dict[str, float]:
    """A head's scores from its logits: the split metrics every run reports (without the split prefix)."""
    return classification_metrics(logits, torch.as_tensor(np.asarray(y, dtype=np.int64)), num_classes=num_classes)


def predict_logits(head: FittedHead, x: np.ndarray, *, batch_size: int = 1024) -> torch.Tensor:
    """(N, K) float32 logits of a fitted head on (N, D) features, in batches (k-NN's distances are (B, N))."""
    head.eval()
    features = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    with torch.inference_mode():
        parts = [head(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, head.num_classes)


def best_head(results: Sequence[HeadResult], monitor: Monitor | None = None) -> HeadResult:
    """The head with the best validation `monitor` (valid_accuracy by default); ties go to the one listed first."""
    monitor = monitor or get_monitor("valid_accuracy")
    key = monitor.name.removeprefix("valid_")
    return functools.reduce(lambda best, r: r if monitor.better(r.valid[key], best.valid[key]) else best, results)


def _check_labels(y: np.ndarray, num_classes: int) -> None:
    missing = sorted(set(range(num_classes)) - set(np.unique(y).tolist()))
    if missing:
        raise DatasetError(f"class index {missing[0]} has no training features; every class needs training images")


# ---- scikit-learn heads -------------------------------------------------------------------------


def standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scaled x, center (D,), scale (D,)): each feature centred, all divided by one global standard deviation.

    One scale rather than StandardScaler's one per feature: per-feature scaling blows near-constant
    channels up to unit variance (torch heads diverged on 32 px images; bench/RESULTS.md).
    """
    center = x.mean(axis=0, dtype=np.float64)
    spread = float(np.std(x, dtype=np.float64)) or 1.0
    scale = np.full(x.shape[1], spread)
    return ((x - center) / spread).astype(np.float32), center, scale


def _logreg(x: np.ndarray, y: np.ndarray, k: int, seed: int, n_jobs: int) -> tuple[FittedHead, Any]:
    from sklearn.linear_model import LogisticRegression

    xs, mean, scale = standardize(x)
    # tol 1e-3 (scikit-learn's default is 1e-4): on the demo's features 35 lbfgs steps instead of 120, 4x faster,
    # the same accuracy (0.888 / 0.887 valid)
    estimator = LogisticRegression(C=0.1, tol=1e-3, max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # ConvergenceWarning: 1,000 lbfgs steps are plenty
        estimator.fit(xs, y)
    coef, bias = estimator.coef_, estimator.intercept_
    if k == 2:  # one row: softmax((-z/2, z/2)) = (1 - sigmoid(z), sigmoid(z))
        coef, bias = np.vstack([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    head = LinearHead(x.shape[1], k)
    head.set_standardization(mean, scale)
    with torch.no_grad():
        head.fc.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        head.fc.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return head, estimator


def _knn(x: np.ndarray, y: np.ndarray, k: int, seed: int, n_jobs: int) -> tuple[FittedHead, Any]:
    from sklearn.neighbors import KNeighborsClassifier

    head = KNNHead(x.shape[1], k, num_train=len(x), k=10, weights="distance")
    unit = F.normalize(torch.as_tensor(x), dim=1)
    estimator = KNeighborsClassifier(head.k, weights="distance", algorithm="brute", n_jobs=n_jobs)
    estimator.fit(unit.numpy(), y)
    head.train_x.copy_(unit)
    head.train_y.copy_(torch.as_tensor(y))
    return head, estimator


def _rf(x: np.ndarray, y: np.ndarray, k: int, seed: int, n_jobs: int) -> tuple[FittedHead, Any]:
    from sklearn.ensemble import RandomForestClassifier

    estimator = RandomForestClassifier(n_estimators=200, n_jobs=n_jobs, random_state=seed).fit(x, y)
    trees = [tree.tree_ for tree in estimator.estimators_]
    head = ForestHead(
        x.shape[1],
        k,
        num_trees=len(trees),
        num_nodes=max(t.node_count for t in trees),
        depth=max(t.max_depth for t in trees),
    )
    for name, array in _pack_trees(trees, head.num_nodes, k).items():
        getattr(head, name).copy_(torch.as_tensor(array))
    return head, estimator


def _pack_trees(trees: list[Any], num_nodes: int, k: int) -> dict[str, np.ndarray]:
    """Flat node arrays of all trees, padded to `num_nodes` each; leaves point to themselves."""
    size = len(trees) * num_nodes
    packed = {
        "feature": np.zeros(size, dtype=np.int64),
        "threshold": np.zeros(size, dtype=np.float32),
        "left": np.arange(size, dtype=np.int64),
        "right": np.arange(size, dtype=np.int64),
        "value": np.zeros((size, k), dtype=np.float32),
    }
    for t, tree in enumerate(trees):
        offset, n = t * num_nodes, tree.node_count
        inner = tree.children_left >= 0
        rows = offset + np.flatnonzero(inner)
        packed["feature"][rows] = tree.feature[inner]
        packed["threshold"][rows] = _float32_floor(tree.threshold[inner])
        packed["left"][rows] = offset + tree.children_left[inner]
        packed["right"][rows] = offset + tree.children_right[inner]
        value = tree.value[:, 0, :]  # (n, K) class fractions (counts in older scikit-learn: normalised below)
        packed["value"][offset : offset + n] = value / value.sum(axis=1, keepdims=True)
    return packed


def _float32_floor(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold: `x <= t` then holds exactly when scikit-learn's does.

    Trees compare float32 features against float64 thresholds; rounding a threshold to the nearest
    float32 could move it past a feature value and flip that comparison.
    """
    rounded = threshold.astype(np.float32)
    above = rounded.astype(np.float64) > threshold
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def _svm(x: np.ndarray, y: np.ndarray, k: int, seed: int, n_jobs: int) -> tuple[FittedHead, Any]:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    xs, mean, scale = standardize(x)
    gamma = 1.0 / (xs.shape[1] * float(xs.var()))  # gamma="scale", computed here to be stored
    svc = SVC(kernel="rbf", C=1.0, gamma=gamma, random_state=seed)
    estimator = CalibratedClassifierCV(svc, method="temperature", ensemble=False, n_jobs=n_jobs)
    with joblib.parallel_config(backend="threading"):  # libsvm releases the GIL; processes take seconds to start
        estimator.fit(xs, y)
    calibrated = estimator.calibrated_classifiers_[0]
    fitted, beta = calibrated.estimator, float(calibrated.calibrators[0].beta_)
    head = SVMHead(x.shape[1], k, num_support=len(fitted.support_vectors_))
    head.set_standardization(mean, scale)
    head.support.copy_(torch.as_tensor(fitted.support_vectors_, dtype=torch.float32))
    head.pair_coef.copy_(torch.as_tensor(_pair_coefficients(fitted, k), dtype=torch.float32))
    head.intercept.copy_(torch.as_tensor(fitted.intercept_, dtype=torch.float32))
    head.gamma.fill_(gamma)
    head.beta.fill_(beta)
    return head, estimator


def _pair_coefficients(svc: Any, k: int) -> np.ndarray:
    """(P, S): the weight of each support vector in each one-vs-one decision, libsvm's layout unpacked.

    `dual_coef_[j - 1]` holds class i's vectors' weights against j (i < j), `dual_coef_[i]` class j's
    against i. Two classes: scikit-learn's own (sign-flipped) single row.
    """
    dual = svc.dual_coef_
    if k == 2:
        return dual
    starts = np.concatenate([[0], np.cumsum(svc.n_support_)])
    coef = np.zeros((k * (k - 1) // 2, dual.shape[1]))
    p = 0
    for i in range(k):
        for j in range(i + 1, k):
            si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
            coef[p, si], coef[p, sj] = dual[j - 1, si], dual[i, sj]
            p += 1
    return coef


# ---- torch heads --------------------------------------------------------------------------------


def _linear(x: np.ndarray, y: np.ndarray, k: int, seed: int, n_jobs: int) -> tuple[FittedHead, Any]:
    head = LinearHead(x.shape[1], k)
    return _train_torch(head, x, y, seed=seed, epochs=20, lr=2e-3, weight_decay=1e-2), None


def _mlp(x: np.ndarray, y: np.ndarray, k: int, seed: int, n_jobs: int) -> tuple[FittedHead, Any]:
    head = MLPHead(x.shape[1], k, hidden=512, dropout=0.5)
    return _train_torch(head, x, y, seed=seed, epochs=15, lr=2e-3, weight_decay=1e-2), None


def _train_torch(
    head: FittedHead, x: np.ndarray, y: np.ndarray, *, seed: int, epochs: int, lr: float, weight_decay: float
) -> FittedHead:
    """AdamW on scaled features, batches of 256, a one-cycle rate, label smoothing 0.1."""
    _, center, scale = standardize(x)
    head.set_standardization(center, scale)
    features, targets = torch.as_tensor(x), torch.as_tensor(y)
    generator = torch.Generator().manual_seed(seed)
    batch = 256
    steps = epochs * math.ceil(len(features) / batch)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            loss = F.cross_entropy(head(features[index]), targets[index], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


_FITTERS: dict[str, Callable[[np.ndarray, np.ndarray, int, int, int], tuple[FittedHead, Any]]] = {
    "logreg": _logreg,
    "rf": _rf,
    "svm": _svm,
    "knn": _knn,
    "linear": _linear,
    "mlp": _mlp,
}
