"""Models: backbones (timm, packaged offline weights, scratch baselines) with our classifier head.

Example:
    >>> from visiontune.models import create_classifier
    >>> model = create_classifier("efficientnet_lite0", num_classes=10)  # doctest: +SKIP
    >>> model.freeze_backbone()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from visiontune.models.classifier import Classifier, build_backbone, create_classifier
from visiontune.models.ensemble import MEMBERS_KEY, Ensemble, average_logits, members_of
from visiontune.models.fitted import FeatureClassifier, FittedHead, fitted_head
from visiontune.models.heads import POOLS, ClassifierHead, pool_features
from visiontune.models.registry import BackboneSpec, get_backbone, list_backbones, register_backbone
from visiontune.models.scratch import MLP, SmallCNN
from visiontune.models.weights import (
    OfflineWeights,
    create_timm_model,
    load_offline_weights,
    load_state_dict_checked,
    load_weights_file,
    read_state_dict,
    rename_efficientnet_pytorch,
)

__all__ = [
    "MEMBERS_KEY",
    "MLP",
    "POOLS",
    "BackboneSpec",
    "Classifier",
    "ClassifierHead",
    "Ensemble",
    "FeatureClassifier",
    "FittedHead",
    "OfflineWeights",
    "SmallCNN",
    "average_logits",
    "build_backbone",
    "build_model",
    "create_classifier",
    "create_timm_model",
    "fitted_head",
    "get_backbone",
    "list_backbones",
    "load_offline_weights",
    "load_state_dict_checked",
    "load_weights_file",
    "members_of",
    "pool_features",
    "read_state_dict",
    "register_backbone",
    "rename_efficientnet_pytorch",
]


def build_model(arch: dict[str, Any]) -> Classifier | Ensemble:
    """The module a bundle's `arch` describes, randomly initialised, ready for `load_state_dict`.

    A classical head fitted on frozen features (method="features") rebuilds as a FeatureClassifier,
    several fine-tuned members as an Ensemble, anything else as a Classifier.
    """
    if MEMBERS_KEY in arch:
        return Ensemble.from_arch(arch)
    if "fitted_head" in arch:
        return FeatureClassifier.from_arch(arch)
    return Classifier.from_arch(arch)
