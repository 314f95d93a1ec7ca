"""Backbone names: ours, timm's, and helpful errors for the rest."""

from __future__ import annotations

import pytest

from visiontune.errors import ModelError
from visiontune.models import BackboneSpec, get_backbone, list_backbones, register_backbone, registry


def test_our_backbones_are_listed_with_their_sizes() -> None:
    specs = {s.name: s for s in list_backbones()}
    assert list(specs)[:5] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "small_cnn", "mlp"]
    assert [specs[f"efficientnet_lite{i}"].default_size for i in range(3)] == [224, 240, 260]
    assert specs["efficientnet_lite0"].timm_name == "tf_efficientnet_lite0"  # TF padding: the exact outputs
    assert specs["efficientnet_lite1"].weights_status() == "offline (package installed)"
    assert specs["small_cnn"].weights_status() == "none (scratch)" and specs["small_cnn"].scratch
    assert (specs["small_cnn"].default_size, specs["mlp"].default_size) == (64, 32)


def test_any_timm_name_is_accepted() -> None:
    spec = get_backbone("convnext_tiny")
    assert spec.timm_name == "convnext_tiny" and spec.offline_weights is None and spec.default_size == 224
    assert spec.weights_status() == "hub or --weights FILE"


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(ModelError) as info:
        get_backbone("efficientnet_lit0")
    message = str(info.value)
    assert message.startswith("unknown model 'efficientnet_lit0'; did you mean: efficientnet_lite0")
    assert message.endswith("? `visiontune models` lists them")
    with pytest.raises(ModelError, match=r"^unknown model 'zzzz' `visiontune models` lists them$"):
        get_backbone("zzzz")


def test_duplicate_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave the real registry untouched
    spec = BackboneSpec("tiny_r18", "resnet18", None, 64, 32, "a test entry")
    assert register_backbone(spec) is spec and get_backbone("tiny_r18") is spec
    with pytest.raises(ModelError, match="already registered"):
        register_backbone(spec)
    with pytest.raises(ModelError, match="already registered"):
        register_backbone(get_backbone("efficientnet_lite0"))
