"""Pooling and the classifier head."""

from __future__ import annotations

import pytest
import torch

from visiontune.errors import ConfigError
from visiontune.models import ClassifierHead, pool_features


def test_pool_features_avg_max_and_avgmax() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # (B, C, H, W)
    assert torch.equal(pool_features(x, "avg"), x.mean(dim=(2, 3)))
    assert torch.equal(pool_features(x, "max"), x[:, :, 1, 1])
    both = pool_features(x, "avgmax")
    assert both.shape == (2, 6) and torch.equal(both[:, 3:], x[:, :, 1, 1])
    with pytest.raises(ConfigError, match=r"`pool` must be one of 'avg', 'max', 'avgmax'. Received: pool='mean'"):
        pool_features(x, "mean")


def test_head_shapes_pre_logits_and_hidden_layer() -> None:
    head = ClassifierHead(16, 5, pool="avgmax", hidden=32).eval()
    x = torch.randn(4, 16, 3, 3)
    assert head(x).shape == (4, 5)
    assert head(x, pre_logits=True).shape == (4, 32)
    head.reset(7)
    assert head(x).shape == (4, 7) and head.num_classes == 7


def test_logits_are_float32_under_bfloat16_autocast() -> None:
    head = ClassifierHead(16, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = torch.nn.functional.conv2d(torch.randn(2, 8, 4, 4), torch.randn(16, 8, 1, 1))
        assert features.dtype == torch.bfloat16  # autocast is really on
        assert head(features).dtype == torch.float32


def test_bad_arguments_say_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match="drop_rate"):
        ClassifierHead(16, 5, drop_rate=1.5)
    with pytest.raises(ConfigError, match="num_classes"):
        ClassifierHead(16, 0)
