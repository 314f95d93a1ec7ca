"""Out-of-sample predicted probabilities for every labelled image, by stratified k-fold on frozen features.

Confident learning is only as good as its probabilities, and a model scoring images it was trained
on has memorised their labels, wrong ones included (fastai's top-losses on the training set): each
image's probabilities here come from a head that never saw it. The features come from the feature
cache (features/extract.py), so after the first embedding a `clean` costs k head fits: seconds. With
a fine-tuned run (`--model RUN`) the run's own backbone embeds the images; its head is not used.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from visiontune.bundle import load_bundle
from visiontune.data.dataset import LabelledImages
from visiontune.errors import DatasetError
from visiontune.features.classical import fit_head, predict_logits
from visiontune.features.extract import Extraction, extract_features
from visiontune.models import Classifier, Ensemble, create_classifier, get_backbone

log = logging.getLogger(__name__)


def feature_model(model: str | Path, num_classes: int, *, image_size: int | None = None) -> Classifier:
    """The network that embeds the images: a backbone by name (pretrained) or a run's / bundle's.

    A name that is also an existing folder is read as the folder. A backbone embeds at its own input
    size unless `image_size` says otherwise (ImageNet features are best at the scale they were learnt
    at, as for `train --method features`); a run embeds at the size it was trained at (an ensemble's
    run with its first member).
    """
    if Path(model).exists():
        classifier, _ = load_bundle(model)
        if isinstance(classifier, Ensemble):  # one network embeds: the run's own (seed) member
            log.info("%s is an ensemble of %d; its first member embeds the images", model, len(classifier.members))
            classifier = classifier.members[0]
        assert isinstance(classifier, Classifier)
        return classifier
    get_backbone(str(model))  # an unknown name is refused here with the list of known ones
    return create_classifier(str(model), num_classes, pretrained=True, image_size=image_size)


def embed_items(
    data: LabelledImages,
    model: Classifier,
    *,
    precision: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> Extraction:
    """Pooled features (N, D) of every sample of `data`, in `data.samples` order, through the feature cache."""
    return extract_features(
        [s.path for s in data.samples],
        model,
        hashes=[data.infos[s.path].sha256 for s in data.samples],
        precision=precision,
        progress=progress,
    )


def fold_count(labels: np.ndarray, classes: list[str], folds: int) -> int:
    """`folds`, or fewer when a class has fewer images (stratification needs one per class per fold); at least 2."""
    if folds < 2:
        raise DatasetError(f"--folds must be at least 2. Received: {folds}")
    counts = Counter(labels.tolist())
    smallest = min(range(len(classes)), key=lambda k: counts.get(k, 0))
    if counts.get(smallest, 0) < 2:
        raise DatasetError(
            f"class {classes[smallest]!r} has {counts.get(smallest, 0)} image(s); "
            "cross-validation needs at least 2 per class: add images or remove the class"
        )
    if counts[smallest] < folds:
        log.warning("class %r has %d images: %d folds instead of %d", classes[smallest], counts[smallest],
                    counts[smallest], folds)  # fmt: skip
    return min(folds, counts[smallest])


def out_of_fold_probabilities(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    folds: int = 5,
    head: str = "linear",
    seed: int = 42,
) -> np.ndarray:
    """(N, K) float32 probabilities: each row from a `head` fitted on the other folds (stratified, shuffled by `seed`).

    Example:
        >>> probs = out_of_fold_probabilities(features, labels, num_classes=10)  # doctest: +SKIP
        >>> probs.shape, probs.sum(axis=1)[:2]  # doctest: +SKIP
        ((4000, 10), array([1., 1.], dtype=float32))
    """
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(y), num_classes), dtype=np.float32)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (fit_rows, held_out) in enumerate(splitter.split(x, y)):
        fitted, _ = fit_head(head, x[fit_rows], y[fit_rows], num_classes=num_classes, seed=seed + fold)
        probs[held_out] = torch.softmax(predict_logits(fitted, x[held_out]), dim=1).numpy()
    return probs
