"""`Classifier`: a backbone that returns feature maps plus our pooling head; the one model interface.

Training, evaluation, bundles, export and serving all talk to this class: `forward_features`,
`forward_head(pre_logits=...)`, freezing, layer groups for discriminative learning rates, and
`arch`, the JSON description that rebuilds the same module around a bundle's weights.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from visiontune.config import check_range
from visiontune.data.transforms import Preprocessing, size_pair
from visiontune.errors import ModelError
from visiontune.models.groups import Group, backbone_group_names, discriminative_param_groups
from visiontune.models.heads import ClassifierHead
from visiontune.models.registry import BackboneSpec, get_backbone
from visiontune.models.weights import load_weights_file

log = logging.getLogger(__name__)

SCRATCH_MEAN_STD = (0.5, 0.5, 0.5)  # scratch nets never saw ImageNet: map 0..1 to -1..1, neutral for grey data
_ARCH_KEYS = ("backbone", "num_classes", "drop_rate", "pool", "image_size", "resize_mode")


class Classifier(nn.Module):
    """A backbone returning (B, C, h, w) feature maps, and a `ClassifierHead` turning them into logits.

    Build one with `create_classifier`; rebuild one for a saved state dict with `from_arch`.
    """

    def __init__(
        self, backbone: nn.Module, head: ClassifierHead, *, preprocessing: Preprocessing, arch: dict[str, Any]
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.preprocessing = preprocessing
        self.arch = dict(arch)
        self.num_features = int(backbone.num_features)
        self.bn_stats_frozen = False
        self._group_names = backbone_group_names(backbone)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> Classifier:
        """The same module as when `arch` was saved, randomly initialised, ready for `load_state_dict`.

        `models.build_model` also rebuilds features bundles (a classical head on frozen features).
        """
        if "fitted_head" in arch:
            raise ModelError("a features bundle's arch: rebuild it with visiontune.models.build_model")
        if "backbone" not in arch and "name" in arch:  # bundles of earlier releases
            arch = {**{k: v for k, v in arch.items() if k != "name"}, "backbone": arch["name"]}
        missing = [k for k in _ARCH_KEYS if k not in arch]
        if missing:
            raise ModelError(f"model arch lacks {', '.join(missing)}; was it written by visiontune?")
        model = create_classifier(
            arch["backbone"],
            arch["num_classes"],
            pretrained=False,
            drop_rate=arch["drop_rate"],
            pool=arch["pool"],
            image_size=tuple(arch["image_size"]),
            resize_mode=arch["resize_mode"],
        )
        if arch.get("timm_name", model.arch["timm_name"]) != model.arch["timm_name"]:
            raise ModelError(
                f"model {arch['backbone']!r} was saved as {arch['timm_name']} but now builds {model.arch['timm_name']};"
                " use the visiontune version that saved it"
            )
        return model

    # ---- forward ------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, C, h, w) feature maps (token and NHWC outputs are reshaped)."""
        return as_feature_map(self.backbone(x), self.num_features, getattr(self.backbone, "num_prefix_tokens", 0))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> (B, num_classes) float32 logits, or the pooled (B, D) features with `pre_logits`."""
        return self.head(features, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # (B, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh last layer for `num_classes` classes (e.g. fine-tuning a trained model on a new task)."""
        self.head.reset(num_classes)
        self.arch["num_classes"] = num_classes

    # ---- freezing -----------------------------------------------------------------------------

    def freeze_backbone(self) -> None:
        """Train the head only: backbone weights fixed and its BatchNorm statistics frozen too."""
        self.unfreeze(top=0)

    def unfreeze(self, top: int | None = None) -> None:
        """Make the last `top` backbone layer groups trainable (all with None); earlier groups stay frozen."""
        groups = self._backbone_groups()
        if top is not None:
            check_range("top", top, 0, math.inf)
        first_trainable = 0 if top is None else max(len(groups) - top, 0)
        for index, (_, params) in enumerate(groups):
            for _, param in params:
                param.requires_grad_(index >= first_trainable)
        self.head.requires_grad_(True)
        self.train(self.training)  # re-apply the BatchNorm rule below to the new split

    def freeze_bn_stats(self, frozen: bool = True) -> None:
        """Keep every backbone BatchNorm in inference mode, even where its weights train (the Keras recipe).

        Its scale and shift still learn, but normalisation keeps the pretrained statistics, so
        unfreezing doesn't suddenly change the features the new head has just learned to read.
        """
        self.bn_stats_frozen = frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        """Like nn.Module.train, but BatchNorm layers whose parameters are all frozen stay in eval mode.

        Otherwise a "frozen" backbone would still drift: its running statistics would follow the
        new data in every training forward pass. With `freeze_bn_stats()` every BatchNorm stays in eval mode.
        """
        super().train(mode)
        if mode:
            keep_all = self.bn_stats_frozen
            for module in self.backbone.modules():
                if isinstance(module, _BatchNorm) and (keep_all or _is_frozen(module)):
                    module.eval()
        return self

    # ---- parameter groups ---------------------------------------------------------------------

    def named_layer_groups(self) -> list[Group]:
        """[(group name, [(parameter name, parameter)])], e.g. stem, stage0 ... stage6, top, head."""
        return [*self._backbone_groups(), ("head", list(self.head.named_parameters(prefix="head")))]

    def param_groups(self, lr: float, *, weight_decay: float, lr_ratio: float = 10.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: learning rates from lr / lr_ratio (stem) up to lr (head).

        Example:
            >>> torch.optim.AdamW(model.param_groups(1e-3, weight_decay=0.05))  # doctest: +SKIP
        """
        return discriminative_param_groups(self.named_layer_groups(), lr, weight_decay=weight_decay, lr_ratio=lr_ratio)

    def parameter_summary(self) -> dict[str, int]:
        """Parameter counts: total, trainable, frozen."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable, "frozen": total - trainable}

    def _backbone_groups(self) -> list[Group]:
        params = dict(self.backbone.named_parameters())
        return [(name, [(f"backbone.{n}", params[n]) for n in names]) for name, names in self._group_names]


def _is_frozen(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def as_feature_map(x: torch.Tensor, channels: int, prefix_tokens: int) -> torch.Tensor:
    """Backbone output -> (B, C, h, w): NCHW as is, NHWC (Swin) permuted, ViT tokens laid on their grid."""
    if x.ndim == 4 and x.shape[1] == channels:
        return x
    if x.ndim == 4 and x.shape[-1] == channels:
        return x.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
    if x.ndim == 3 and x.shape[-1] == channels:
        tokens = x[:, prefix_tokens:]  # (B, h*w, C) without the class/register tokens
        side = math.isqrt(tokens.shape[1])
        if side * side == tokens.shape[1]:
            return tokens.transpose(1, 2).reshape(x.shape[0], channels, side, side)
    raise ModelError(f"backbone output of shape {tuple(x.shape)} is not a feature map visiontune can pool")


# ---- building -----------------------------------------------------------------------------------


def create_classifier(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    drop_rate: float = 0.2,
    pool: str = "avg",
    image_size: int | tuple[int, int] | None = None,
    resize_mode: str = "squish",
) -> Classifier:
    """A backbone by name with a fresh head for `num_classes` classes, and its preprocessing.

    `pretrained=True` loads packaged weights for the offline models and hub weights for other timm
    names; `weights` (a .safetensors / .pth file) overrides both; `pretrained=False` is random init.

    Example:
        >>> model = create_classifier("efficientnet_lite0", 10, image_size=128)  # doctest: +SKIP
        >>> model(torch.randn(2, 3, 128, 128)).shape  # doctest: +SKIP
        torch.Size([2, 10])
    """
    spec = get_backbone(name)  # the head checks num_classes, drop_rate and pool; Preprocessing the resize_mode
    size = size_pair(spec.default_size if image_size is None else image_size)
    _check_min_size(spec, size, spec.min_size)
    backbone = build_backbone(spec, image_size=size, pretrained=pretrained and weights is None)
    _check_backbone_size(spec, backbone, size)
    if weights is not None:
        classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier")
        load_weights_file(backbone, weights, arch=spec.timm_name or spec.name, classifier=classifier)
    head = ClassifierHead(backbone.num_features, num_classes, drop_rate=drop_rate, pool=pool, hidden=spec.head_hidden)
    arch = {
        "backbone": spec.name,
        "timm_name": spec.timm_name,
        "num_classes": num_classes,
        "drop_rate": drop_rate,
        "pool": pool,
        "image_size": list(size),
        "resize_mode": resize_mode,
        "head_hidden": spec.head_hidden,
        "num_features": int(backbone.num_features),
    }
    return Classifier(backbone, head, preprocessing=_preprocessing(spec, backbone, size, resize_mode), arch=arch)


def build_backbone(spec: BackboneSpec, *, image_size: tuple[int, int], pretrained: bool = False) -> nn.Module:
    """The feature-map backbone alone: a timm model without pooling and classifier, or a scratch net."""
    if spec.builder is not None:
        if pretrained:
            log.info("%s has no pretrained weights; it starts from random init", spec.name)
        return spec.builder(image_size=image_size)
    # No pooling, no classifier and no timm dropout: our head does all three.
    return spec.create_timm_model(pretrained=pretrained, num_classes=0, global_pool="", drop_rate=0.0)


def _preprocessing(spec: BackboneSpec, backbone: nn.Module, size: tuple[int, int], resize_mode: str) -> Preprocessing:
    if spec.scratch:
        return Preprocessing(
            image_size=size,
            mean=SCRATCH_MEAN_STD,
            std=SCRATCH_MEAN_STD,
            interpolation="bilinear",
            crop_pct=1.0,
            resize_mode=resize_mode,
        )
    return Preprocessing.from_timm(backbone, image_size=size, resize_mode=resize_mode)


def _check_min_size(spec: BackboneSpec, size: tuple[int, int], minimum: int) -> None:
    if min(size) < minimum:
        shown = size[0] if size[0] == size[1] else size
        raise ModelError(
            f"image_size {shown} is below {spec.name}'s minimum of {minimum}; pass image_size={minimum} or more"
        )


def _check_backbone_size(spec: BackboneSpec, backbone: nn.Module, size: tuple[int, int]) -> None:
    """What only the built model knows: its total stride, and whether its input size is fixed (ViT)."""
    info = getattr(backbone, "feature_info", None)
    if isinstance(info, list) and info and "reduction" in info[-1]:
        _check_min_size(spec, size, max(spec.min_size, int(info[-1]["reduction"])))
    cfg = getattr(backbone, "pretrained_cfg", {})
    native = tuple(cfg.get("input_size", (3, 0, 0))[-2:])
    if cfg.get("fixed_input_size") and native != size:
        raise ModelError(
            f"{spec.name} only takes {native[0]}x{native[1]} images; pass image_size={native[0]} or pick another model"
        )
