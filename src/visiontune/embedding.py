"""Logits and the pooled embedding of a batch in one forward pass (what the k-NN unknown score reads).

The embedding is the pooled backbone feature map the head starts from: for a fine-tuned
`Classifier`, `pool(forward_features(x))` (before any hidden layer and dropout); for a
`FeatureClassifier`, exactly the vectors its head was fitted on (`embed`, mirror-averaged with
TTA). `Inference` runs these as its `forward`, so training's bank, predict, serve and the ONNX
graph all see the same vectors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from visiontune.models.classifier import Classifier
from visiontune.models.fitted import FeatureClassifier
from visiontune.models.heads import pool_features


def embeddings(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B, D) float32 pooled embeddings."""
    if isinstance(model, FeatureClassifier):
        return model.embed(images)
    if not isinstance(model, Classifier):
        raise TypeError(f"embeddings need a visiontune Classifier, not {type(model).__name__}")
    return pool_features(model.forward_features(images), model.head.pool).float()


def logits_and_embeddings(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward returning (B, K + D): the logits, then the embedding, from one pass of the backbone."""
    if callable(getattr(model, "logits_and_embeddings", None)):  # an ONNX graph with its embeddings output
        return model.logits_and_embeddings  # type: ignore[return-value]

    def forward(images: torch.Tensor) -> torch.Tensor:
        if isinstance(model, FeatureClassifier):
            embedded = model.embed(images)
            return torch.cat([model.head.fitted(embedded).float(), embedded], dim=1)
        feature_map = model.forward_features(images)
        pooled = pool_features(feature_map, model.head.pool).float()
        return torch.cat([model.forward_head(feature_map).float(), pooled], dim=1)

    return forward


def has_embeddings(model: nn.Module) -> bool:
    """Whether `model` can give embeddings: a bundle's Classifier, or an ONNX graph exported with them."""
    return isinstance(model, Classifier) or bool(getattr(model, "embeds", False))
