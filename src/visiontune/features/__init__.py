"""The features method: embed each image once with a frozen backbone, fit classical heads on the vectors.

Example:
    >>> from visiontune.features import extract_features, fit_heads
    >>> model = create_classifier("efficientnet_lite0", 10)  # doctest: +SKIP
    >>> train = extract_features(train_paths, model).features  # doctest: +SKIP
    >>> valid = extract_features(valid_paths, model).features  # doctest: +SKIP
    >>> results = fit_heads(train, train_labels, valid, valid_labels, heads=("logreg", "knn"))  # doctest: +SKIP
"""

from __future__ import annotations

from visiontune.features.cache import FeatureCache, default_feature_dir, weights_digest
from visiontune.features.classical import DEFAULT_HEADS, HEADS, HeadResult, best_head, fit_head, fit_heads, score
from visiontune.features.extract import Extraction, View, extract_features, feature_recipe, hash_files

__all__ = [
    "DEFAULT_HEADS",
    "HEADS",
    "Extraction",
    "FeatureCache",
    "HeadResult",
    "View",
    "best_head",
    "default_feature_dir",
    "extract_features",
    "feature_recipe",
    "fit_head",
    "fit_heads",
    "hash_files",
    "score",
    "weights_digest",
]
