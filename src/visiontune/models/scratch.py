"""Backbones trained from scratch: the baselines every transfer-learning result is compared with.

They answer the same interface as a timm backbone created with `num_classes=0, global_pool=""`:
calling them returns a (B, C, h, w) feature map, `num_features` is C, and `group_matcher` splits
their parameters into layer groups, so `Classifier` treats them like any pretrained backbone.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from torch import nn

from visiontune.errors import ModelError

SMALL_CNN_WIDTHS = (32, 64, 128)
MLP_HIDDEN = 512


class SmallCNN(nn.Module):
    """Conv3x3-BN-ReLU-MaxPool stages of 32, 64 and 128 channels (the Keras seeds' baseline).

    Any input of 8 pixels or more works: the map shrinks by 8 and the head pools it globally.
    """

    def __init__(self, *, in_chans: int = 3, widths: tuple[int, ...] = SMALL_CNN_WIDTHS) -> None:
        super().__init__()
        channels = (in_chans, *widths)
        self.stages = nn.Sequential(*(_conv_stage(c_in, c_out) for c_in, c_out in pairwise(channels)))
        self.num_features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)  # (B, 3, H, W) -> (B, 128, H/8, W/8)

    def group_matcher(self, coarse: bool = True) -> dict[str, Any]:
        return {"blocks": r"^stages\.(\d+)"}


def _conv_stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class MLP(nn.Module):
    """Flatten -> two hidden layers of 512: a baseline for tiny images such as 28 px digits.

    The first layer's width depends on the image size, so inputs must have exactly `image_size`.
    The output is reshaped to a (B, 512, 1, 1) map, which the shared head pools as a no-op.
    """

    def __init__(
        self, image_size: tuple[int, int], *, in_chans: int = 3, hidden: int = MLP_HIDDEN, depth: int = 2
    ) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        widths = (in_chans * self.image_size[0] * self.image_size[1], *([hidden] * depth))
        self.layers = nn.Sequential(
            *(nn.Sequential(nn.Linear(w_in, w_out), nn.ReLU(inplace=True)) for w_in, w_out in pairwise(widths))
        )
        self.num_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ModelError(
                f"mlp was built for {self.image_size[0]}x{self.image_size[1]} images, got {x.shape[-2]}x{x.shape[-1]};"
                " resize inputs with the model's preprocessing"
            )
        x = self.layers(x.flatten(1))  # (B, 3*H*W) -> (B, 512)
        return x[:, :, None, None]  # (B, 512, 1, 1)

    def group_matcher(self, coarse: bool = True) -> dict[str, Any]:
        return {"blocks": r"^layers\.(\d+)"}


def build_small_cnn(*, image_size: tuple[int, int]) -> SmallCNN:
    return SmallCNN()
