"""The from-scratch baselines answer the same interface as pretrained backbones."""

from __future__ import annotations

import pytest
import torch

from visiontune.errors import ModelError
from visiontune.models import create_classifier


@pytest.mark.parametrize("size", [28, 64])
def test_small_cnn_and_mlp_shapes(size: int) -> None:
    for name in ("small_cnn", "mlp"):
        model = create_classifier(name, 10, image_size=size).eval()
        x = torch.randn(2, 3, size, size)
        features = model.forward_features(x)
        assert features.ndim == 4 and features.shape[:2] == (2, model.num_features)
        assert model(x).shape == (2, 10)
        assert model.preprocessing.image_size == (size, size)


def test_small_cnn_head_has_the_keras_hidden_layer() -> None:
    model = create_classifier("small_cnn", 3).eval()
    assert model.preprocessing.image_size == (64, 64) and model.preprocessing.mean == (0.5, 0.5, 0.5)
    assert model.num_features == 128 and model.head(torch.randn(1, 128, 8, 8), pre_logits=True).shape == (1, 512)
    assert [name for name, _ in model.named_layer_groups()] == ["stage0", "stage1", "stage2", "head"]


def test_mlp_refuses_other_sizes_and_tiny_sizes_are_refused() -> None:
    model = create_classifier("mlp", 3, image_size=28)
    with pytest.raises(ModelError, match="built for 28x28 images, got 32x32"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ModelError, match="image_size 4 is below small_cnn's minimum of 8"):
        create_classifier("small_cnn", 3, image_size=4)
