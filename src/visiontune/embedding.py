"""Logits and the embedding of a batch in one forward pass (what the k-NN unknown score reads).

Two layouts of "the embedding", named in the detector a bundle stores, so every reader builds
the vectors its bank was fitted on:

- "pooled": the pooled backbone feature map the head starts from. For a fine-tuned `Classifier`,
  `pool(forward_features(x))` (before any hidden layer and dropout); for a `FeatureClassifier`,
  exactly the vectors its head was fitted on (`embed`, mirror-averaged with TTA). Features bundles,
  and every bundle written before "stages" existed, read this one.
- "stages": the average-pooled output of each feature stage the backbone lists (timm's
  `feature_info`, e.g. EfficientNet's blocks 0, 1, 2, 4 and 6), then the "pooled" vector, each
  scaled to unit length and concatenated: the cosine similarity of two such vectors is the mean
  of their per-stage similarities. Fine-tuned bundles use it. Fine-tuning pulls the last
  embedding towards what separates the classes and away from what tells a blurry digit from a
  garment; the earlier stages keep it (the feature ensemble of Lee et al., NeurIPS 2018, read by
  the k-NN score of Sun et al., ICML 2022). On the fine-tuned demo run the k-NN AUROC on
  upsampled digits goes from 0.894 ("pooled") to 0.994 (bench/RESULTS.md).

The stage outputs are read by forward hooks during the model's own forward, so the logits are
exactly the plain forward's and the backbone runs once. `Inference` runs these as its `forward`,
so training's bank, predict, serve, evaluate and the ONNX graph all see the same vectors.

An `Ensemble`'s embedding is its members' (each in the layout), each scaled to unit length and
by 1 / sqrt(members), then concatenated: its cosine similarity is the mean of the members'.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable

import torch
from torch import nn

from visiontune.config import check_choice
from visiontune.detector import LAYOUTS, POOLED, STAGES
from visiontune.models.classifier import Classifier, as_feature_map
from visiontune.models.ensemble import Ensemble, average_logits
from visiontune.models.fitted import FeatureClassifier
from visiontune.models.heads import pool_features


def default_layout(model: nn.Module) -> str:
    """The layout a detector fitted now uses for `model`: "stages" for a fine-tuned backbone that lists its stages."""
    if isinstance(model, Ensemble):
        return STAGES if all(default_layout(m) == STAGES for m in model.members) else POOLED
    if isinstance(model, FeatureClassifier) or not isinstance(model, Classifier):
        return POOLED  # features bundles: the cached vectors the head was fitted on
    return STAGES if _stages(model) else POOLED


def embeddings(model: nn.Module, images: torch.Tensor, layout: str = POOLED) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B, D) float32 embeddings in `layout`."""
    if not isinstance(model, Classifier | Ensemble):
        raise TypeError(f"embeddings need a visiontune Classifier, not {type(model).__name__}")
    return logits_and_embeddings(model, layout)(images)[:, model.num_classes :]


def logits_and_embeddings(model: nn.Module, layout: str = POOLED) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward returning (B, K + D): the logits, then the embedding in `layout`, from one pass of the backbone."""
    check_choice("embedding", layout, LAYOUTS)
    if callable(getattr(model, "logits_and_embeddings", None)):  # an ONNX graph: its embeddings output
        return model.logits_and_embeddings  # type: ignore[return-value]
    if isinstance(model, FeatureClassifier):
        if layout != POOLED:
            raise ValueError(f"a features model's embedding is {POOLED!r}, not {layout!r}")
        return lambda images: _feature_outputs(model, images)
    if isinstance(model, Ensemble):
        return _ensemble_forward(model, layout)
    if not isinstance(model, Classifier):
        raise TypeError(f"embeddings need a visiontune Classifier, not {type(model).__name__}")

    def forward(images: torch.Tensor) -> torch.Tensor:
        with _StageTaps(model if layout == STAGES else None) as taps:
            feature_map = model.forward_features(images)
        pooled = pool_features(feature_map, model.head.pool).float()
        if layout == STAGES:
            pooled = torch.cat([_unit(v) for v in [*taps.pooled, pooled]], dim=1)
        return torch.cat([model.forward_head(feature_map).float(), pooled], dim=1)

    return forward


def has_embeddings(model: nn.Module) -> bool:
    """Whether `model` can give embeddings: a bundle's Classifier, or an ONNX graph exported with them."""
    return isinstance(model, Classifier | Ensemble) or bool(getattr(model, "embeds", False))


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1, in plain ops (ReduceSum, Rsqrt) that ONNX shape inference and int8 tools know."""
    return vectors * (vectors * vectors).sum(dim=1, keepdim=True).clamp_min(1e-24).rsqrt()


def _ensemble_forward(model: Ensemble, layout: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, K + D): the members' averaged logits, then their unit embeddings concatenated (scaled by 1 / sqrt(k))."""
    forwards = [logits_and_embeddings(member, layout) for member in model.members]
    classes, scale = model.num_classes, 1.0 / math.sqrt(len(forwards))

    def forward(images: torch.Tensor) -> torch.Tensor:
        outputs = [f(images) for f in forwards]
        logits = average_logits([o[:, :classes] for o in outputs])
        return torch.cat([logits, *[_unit(o[:, classes:]) * scale for o in outputs]], dim=1)

    return forward


def _feature_outputs(model: FeatureClassifier, images: torch.Tensor) -> torch.Tensor:
    embedded = model.embed(images)
    return torch.cat([model.head.fitted(embedded).float(), embedded], dim=1)


def _stages(model: Classifier) -> list[tuple[nn.Module, int]]:
    """(module, channels) of each stage the backbone lists in timm's `feature_info`; [] when it lists none."""
    info = getattr(model.backbone, "feature_info", None)
    if not isinstance(info, list):
        return []
    found = []
    for stage in info:
        try:
            found.append((model.backbone.get_submodule(str(stage["module"])), int(stage["num_chs"])))
        except (AttributeError, KeyError, TypeError, ValueError):
            return []
    return found


class _StageTaps(contextlib.AbstractContextManager["_StageTaps"]):
    """Forward hooks that average-pool each stage's output during one forward call of this thread.

    Registered for the call and removed after it; a hook ignores forwards of other threads (the
    serve process may run the same model from two threads), so concurrent calls never mix.
    """

    def __init__(self, model: Classifier | None) -> None:
        self.model, self.pooled, self.handles = model, [], []  # type: ignore[var-annotated]
        self.thread = threading.get_ident()

    def __enter__(self) -> _StageTaps:
        if self.model is not None:
            prefix = getattr(self.model.backbone, "num_prefix_tokens", 0)
            for module, channels in _stages(self.model):
                self.handles.append(module.register_forward_hook(self._hook(channels, prefix)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, channels: int, prefix: int) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if threading.get_ident() == self.thread:
                self.pooled.append(as_feature_map(output, channels, prefix).float().mean(dim=(2, 3)))

        return record
