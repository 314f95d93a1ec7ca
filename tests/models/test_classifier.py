"""Classifier: preprocessing, rebuilding from arch, freezing, layer groups and parameter groups."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from visiontune.errors import ModelError
from visiontune.models import Classifier, create_classifier

LITE0_GROUPS = ["stem", *(f"stage{i}" for i in range(7)), "top", "head"]


@pytest.fixture
def lite0() -> Classifier:
    """A fresh pretrained lite0 at 64 px for each test (building one takes about 0.2 s)."""
    torch.manual_seed(0)
    return create_classifier("efficientnet_lite0", 3, image_size=64)


def _trainable_names(model: Classifier) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _group_names(model: Classifier, *groups: str) -> set[str]:
    return {name for group, params in model.named_layer_groups() if group in groups for name, _ in params}


def test_lite_preprocessing_comes_from_the_weights() -> None:
    model = create_classifier("efficientnet_lite1", 4, resize_mode="crop")
    pre = model.preprocessing
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)  # not ImageNet's: these weights were trained on -1..1 inputs
    assert (pre.image_size, pre.interpolation, pre.crop_pct, pre.resize_mode) == ((240, 240), "bicubic", 0.882, "crop")


def test_forward_shapes_and_interface(lite0: Classifier) -> None:
    lite0.eval()
    x = torch.randn(2, 3, 64, 64)
    features = lite0.forward_features(x)
    assert features.shape == (2, 1280, 2, 2) and lite0.num_features == 1280
    assert lite0.forward_head(features, pre_logits=True).shape == (2, 1280)
    assert torch.equal(lite0(x), lite0.forward_head(features))
    assert lite0.num_classes == 3 and lite0.preprocessing.image_size == (64, 64)
    lite0.reset_classifier(5)
    assert lite0(x).shape == (2, 5) and lite0.arch["num_classes"] == 5


def test_pretrained_false_is_random_init(lite0: Classifier) -> None:
    random = create_classifier("efficientnet_lite0", 3, pretrained=False, image_size=64)
    assert not torch.equal(random.backbone.conv_stem.weight, lite0.backbone.conv_stem.weight)


def test_logits_are_float32_under_autocast(lite0: Classifier) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lite0.forward_features(torch.randn(1, 3, 64, 64)).dtype == torch.bfloat16
        assert lite0(torch.randn(1, 3, 64, 64)).dtype == torch.float32


def test_from_arch_rebuilds_the_same_module(lite0: Classifier) -> None:
    model = create_classifier("efficientnet_lite0", 4, image_size=(64, 96), pool="avgmax", drop_rate=0.3).eval()
    arch = json.loads(json.dumps(model.arch))
    rebuilt = Classifier.from_arch(arch)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 96)
    assert torch.equal(rebuilt.eval()(x), model(x))
    assert rebuilt.preprocessing == model.preprocessing and rebuilt.arch == model.arch
    with pytest.raises(ModelError, match="lacks num_classes"):
        Classifier.from_arch({k: v for k, v in arch.items() if k != "num_classes"})
    legacy = {("name" if k == "backbone" else k): v for k, v in arch.items()}  # bundles of the previous release
    assert Classifier.from_arch(legacy).arch == model.arch


def test_image_size_below_the_minimum_is_refused() -> None:
    with pytest.raises(ModelError, match=r"^image_size 16 is below efficientnet_lite0's minimum of 32"):
        create_classifier("efficientnet_lite0", 3, image_size=16)


def test_fixed_size_models_refuse_other_sizes() -> None:
    with pytest.raises(ModelError, match="only takes 224x224 images"):
        create_classifier("vit_tiny_patch16_224", 3, pretrained=False, image_size=160)


def test_layer_groups_run_early_to_late(lite0: Classifier) -> None:
    names = [name for name, _ in lite0.named_layer_groups()]
    assert names == LITE0_GROUPS
    groups = [[p for _, p in params] for _, params in lite0.named_layer_groups()]
    assert sum(len(g) for g in groups) == len(list(lite0.parameters()))
    assert groups[0][0] is lite0.backbone.conv_stem.weight and groups[-1][-1] is lite0.head.fc.bias
    assert {n for n, _ in lite0.named_layer_groups()[-2][1]} == {
        "backbone.conv_head.weight",
        "backbone.bn2.weight",
        "backbone.bn2.bias",
    }


def test_frozen_backbone_keeps_its_batchnorm_statistics(lite0: Classifier) -> None:
    lite0.freeze_backbone()
    lite0.train()
    before = lite0.backbone.bn1.running_mean.clone()
    lite0(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert torch.equal(lite0.backbone.bn1.running_mean, before)
    assert _trainable_names(lite0) == {"head.fc.weight", "head.fc.bias"}
    assert lite0.head.training and not any(m.training for m in lite0.backbone.modules() if isinstance(m, _BatchNorm))
    summary = lite0.parameter_summary()
    assert summary["trainable"] == 1280 * 3 + 3 and summary["total"] == summary["trainable"] + summary["frozen"]


def test_unfreeze_top_groups_then_everything(lite0: Classifier) -> None:
    lite0.freeze_backbone()
    lite0.unfreeze(top=2)
    assert _trainable_names(lite0) == _group_names(lite0, "stage6", "top", "head")
    lite0.train()
    assert not lite0.backbone.blocks[5][0].bn1.training and lite0.backbone.blocks[6][0].bn1.training
    before = lite0.backbone.bn1.running_mean.clone()
    lite0(torch.randn(2, 3, 64, 64))
    assert torch.equal(lite0.backbone.bn1.running_mean, before)
    lite0.unfreeze()
    assert _trainable_names(lite0) == {name for name, _ in lite0.named_parameters()}
    assert all(m.training for m in lite0.modules())


def test_frozen_bn_statistics_survive_unfreezing_while_bn_weights_train(lite0: Classifier) -> None:
    lite0.unfreeze()
    lite0.freeze_bn_stats()
    lite0.train()
    bn = lite0.backbone.bn1
    before = bn.running_mean.clone()
    lite0(torch.randn(4, 3, 64, 64) * 3 + 1).sum().backward()
    assert torch.equal(bn.running_mean, before) and not bn.training
    assert bn.weight.requires_grad and bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    lite0.freeze_bn_stats(False)  # "adapt": the statistics follow the data again
    lite0(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert bn.training and not torch.equal(bn.running_mean, before)


def _check_param_groups(model: Classifier, groups: list[dict], lr: float) -> None:
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and lrs[-1] == pytest.approx(lr)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each once, frozen out
    for group in groups:
        no_decay = group["name"].endswith("/no_decay")
        assert all((p.ndim <= 1) == no_decay for p in group["params"])
        assert group["weight_decay"] == (0.0 if no_decay else 0.05)


def test_param_groups_give_discriminative_rates(lite0: Classifier) -> None:
    groups = lite0.param_groups(1e-3, weight_decay=0.05, lr_ratio=10.0)
    _check_param_groups(lite0, groups, 1e-3)
    assert groups[0]["name"] == "stem/decay" and groups[0]["lr"] == pytest.approx(1e-4)
    assert [g["name"] for g in groups[-2:]] == ["head/decay", "head/no_decay"]
    lite0.freeze_backbone()
    head_only = lite0.param_groups(1e-3, weight_decay=0.05)
    _check_param_groups(lite0, head_only, 1e-3)
    assert [g["name"] for g in head_only] == ["head/decay", "head/no_decay"]
    lite0.unfreeze(top=1)
    assert lite0.param_groups(1e-3, weight_decay=0.05)[0]["name"] == "top/decay"
