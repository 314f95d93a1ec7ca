"""FeatureClassifier: a backbone plus a fitted head, rebuilt from its arch and bundled like any Classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from visiontune.bundle import BundleMeta, load_bundle, save_bundle
from visiontune.errors import ModelError
from visiontune.models import build_model, create_classifier, pool_features
from visiontune.models.fitted import FeatureClassifier, KNNHead, LinearHead, embed, fitted_head


def _classifier() -> FeatureClassifier:
    torch.manual_seed(0)
    base = create_classifier("small_cnn", 3, pretrained=False, image_size=32)
    head = LinearHead(base.num_features, 3)
    head.set_standardization(torch.randn(base.num_features), torch.rand(base.num_features) + 0.5)
    return FeatureClassifier.wrap(base, head, pool="max", tta=True)


def test_forward_is_the_head_on_mirror_averaged_pooled_features() -> None:
    model = _classifier().eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        maps = model.forward_features(torch.cat([images, images.flip(-1)]))
        pooled = pool_features(maps, "max")
        expected = model.head.fitted((pooled[:4] + pooled[4:]) / 2)
        torch.testing.assert_close(model(images), expected)
        torch.testing.assert_close(model.embed(images), embed(model, images, pool="max", tta=True))
    assert model.arch["fitted_head"]["kind"] == "linear" and model.arch["tta"] is True
    assert not any(p.requires_grad for p in model.parameters())


def test_bundle_round_trip(tmp_path: Path) -> None:
    model = _classifier().eval()
    meta = BundleMeta(arch=model.arch, classes=["a", "b", "c"], preprocessing=model.preprocessing)
    save_bundle(tmp_path / "model", model, meta)
    loaded, meta = load_bundle(tmp_path / "model")
    assert isinstance(loaded, FeatureClassifier) and isinstance(build_model(meta.arch), FeatureClassifier)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_head_shapes_come_from_the_config() -> None:
    head = KNNHead(8, 3, num_train=5, k=10)
    assert head.k == 5  # never more neighbours than training vectors
    twin = fitted_head(head.config())
    assert isinstance(twin, KNNHead) and twin.train_x.shape == (5, 8)
    with pytest.raises(ModelError, match="unknown fitted head kind"):
        fitted_head({"kind": "xgboost", "in_features": 8, "num_classes": 3})


def test_a_fitted_head_is_not_reset() -> None:
    with pytest.raises(ModelError, match="fit a new one"):
        _classifier().reset_classifier(5)
