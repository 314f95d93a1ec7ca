"""Layer groups (early -> late) and the optimizer parameter groups built from them.

Groups come from the backbone's `group_matcher(coarse=True)`, the timm convention that our
scratch backbones follow too: a `stem` pattern and `blocks` patterns whose captured numbers order
the stages. Unlike timm's own grouping, layers after the last stage (EfficientNet's conv_head,
a ViT's final norm) form a separate "top" group, so "unfreeze the top 2 groups" means the last
stage and the head convolution, as in the Keras fine-tuning recipe.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from torch import nn

from visiontune.config import check_range

Group = tuple[str, list[tuple[str, nn.Parameter]]]  # (group name, [(parameter name, parameter)])

_STEM = (-math.inf,)
_TOP = (math.inf,)
_TOP_FIXED = 99999  # timm's matchers give layers after the last stage this fixed key


def backbone_group_names(backbone: nn.Module) -> list[tuple[str, list[str]]]:
    """[(group name, [parameter names])] ordered from input to output, covering every parameter once."""
    matcher = backbone.group_matcher(coarse=True) if hasattr(backbone, "group_matcher") else None
    if not matcher:
        return _by_children(backbone)
    keyed: dict[tuple[float, ...], list[str]] = defaultdict(list)
    for name, _ in backbone.named_parameters():
        keyed[_group_key(name, matcher)].append(name)
    return [(_key_name(key), names) for key, names in sorted(keyed.items())]


def _group_key(name: str, matcher: dict[str, Any]) -> tuple[float, ...]:
    """Where parameter `name` falls: the stem, a stage numbered by the pattern's groups, or the top."""
    if any(re.match(p, name) for p in _patterns(matcher.get("stem"))):
        return _STEM
    blocks = matcher.get("blocks", ())
    for pattern, fixed in [(blocks, None)] if isinstance(blocks, str) else blocks:
        found = re.match(pattern, name)
        if found:
            key = tuple(fixed) if fixed is not None else tuple(int(g) for g in found.groups() if g is not None)
            return _TOP if key and key[0] >= _TOP_FIXED else key
    return _TOP


def _patterns(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _key_name(key: tuple[float, ...]) -> str:
    if key == _STEM:
        return "stem"
    if key == _TOP:
        return "top"
    return "stage" + "_".join(str(int(k)) for k in key)


def _by_children(backbone: nn.Module) -> list[tuple[str, list[str]]]:
    """Fallback for modules without a matcher: one group per top-level child, in definition order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name, _ in backbone.named_parameters():
        groups[name.split(".", 1)[0]].append(name)
    return list(groups.items())


def discriminative_param_groups(
    groups: Sequence[Group], lr: float, *, weight_decay: float, lr_ratio: float = 10.0
) -> list[dict[str, Any]]:
    """Optimizer groups with learning rates rising geometrically from lr / lr_ratio (first) to lr (last).

    Rates are spread over all groups, trainable or not, so a group keeps its rate as more of the
    network is unfrozen. Within a group, norm weights and biases (ndim <= 1) get no weight decay.
    Frozen parameters are left out.
    """
    check_range("lr", lr, 0.0, math.inf, low_open=True)
    check_range("lr_ratio", lr_ratio, 1.0, math.inf)
    check_range("weight_decay", weight_decay, 0.0, math.inf)
    last = max(len(groups) - 1, 1)
    out = []
    for index, (name, params) in enumerate(groups):
        group_lr = lr / lr_ratio ** ((len(groups) - 1 - index) / last)
        trainable = [p for _, p in params if p.requires_grad]
        for suffix, chosen, decay in (
            ("decay", [p for p in trainable if p.ndim > 1], weight_decay),
            ("no_decay", [p for p in trainable if p.ndim <= 1], 0.0),
        ):
            if chosen:
                out.append({"params": chosen, "lr": group_lr, "weight_decay": decay, "name": f"{name}/{suffix}"})
    return out
