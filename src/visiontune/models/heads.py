"""Classifier heads: global pooling -> (hidden layer) -> dropout -> linear, the fastai/Keras recipe.

`pool_features` is shared with the feature-extraction path, which pools backbone maps once and
fits classical heads on them.
"""

from __future__ import annotations

import torch
from torch import nn

from visiontune.config import check_choice, check_range

POOLS = ("avg", "max", "avgmax")


def pool_features(x: torch.Tensor, pool: str = "avg") -> torch.Tensor:
    """(B, C, H, W) -> (B, C), or (B, 2C) for "avgmax" (average and max concatenated, as fastai does).

    Example:
        >>> pool_features(torch.ones(2, 8, 3, 3), "avgmax").shape
        torch.Size([2, 16])
    """
    check_choice("pool", pool, POOLS)
    if x.ndim != 4:
        raise ValueError(f"pool_features expects a (B, C, H, W) map, got shape {tuple(x.shape)}")
    if pool == "avg":
        return x.mean(dim=(2, 3))
    if pool == "max":
        return x.amax(dim=(2, 3))
    return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class ClassifierHead(nn.Module):
    """Pool a feature map, optionally through a ReLU hidden layer, then dropout and a linear layer.

    The final linear layer runs in float32 even under autocast: logits feed the loss, softmax
    and calibration, where bf16's 8-bit mantissa visibly rounds probabilities.

    Example:
        >>> head = ClassifierHead(1280, 10)
        >>> head(torch.randn(4, 1280, 7, 7)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        drop_rate: float = 0.2,
        pool: str = "avg",
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        check_choice("pool", pool, POOLS)
        check_range("drop_rate", drop_rate, 0.0, 1.0)
        check_range("num_classes", num_classes, 1, 1_000_000)
        self.pool = pool
        width = 2 * in_features if pool == "avgmax" else in_features
        self.hidden = (
            nn.Identity() if hidden is None else nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True))
        )
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden or width, num_classes)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def forward(self, feature_map: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) float32 logits, or (B, D) features before the last layer."""
        x = self.drop(self.hidden(pool_features(feature_map, self.pool)))
        if pre_logits:
            return x
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.fc(x.float())

    def reset(self, num_classes: int) -> None:
        """A fresh last layer for another number of classes; pooling and hidden layer are kept."""
        check_range("num_classes", num_classes, 1, 1_000_000)
        self.fc = nn.Linear(self.fc.in_features, num_classes, device=self.fc.weight.device)
