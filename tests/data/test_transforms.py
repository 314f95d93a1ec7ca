from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision.transforms import v2

from visiontune.config import AugmentConfig
from visiontune.data.transforms import Preprocessing, ResizePad, build_transform
from visiontune.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    """A real photo: 451 wide x 300 high."""
    return Image.fromarray(skdata.chelsea())


def thirds(size: tuple[int, int] = (300, 100)) -> Image.Image:
    """(w, h) image split in vertical thirds: RED | GREEN | BLUE (for a tall size, rows instead)."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    if width >= height:
        for k, colour in enumerate((RED, GREEN, BLUE)):
            pixels[:, k * width // 3 : (k + 1) * width // 3] = colour
    else:
        for k, colour in enumerate((RED, GREEN, BLUE)):
            pixels[k * height // 3 : (k + 1) * height // 3] = colour
    return Image.fromarray(pixels)


def pre(size: int | tuple[int, int] = (64, 96), mode: str = "squish", **kwargs) -> Preprocessing:
    return Preprocessing(image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize_mode=mode, **kwargs)


def denormalize(batch: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W) normalised tensors back to 0..1 colours."""
    mean = torch.tensor(pre.mean, dtype=batch.dtype).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=batch.dtype).view(3, 1, 1)
    return (batch * std + mean).clamp(0.0, 1.0)


def colour_at(tensor: torch.Tensor, p: Preprocessing, y: int, x: int) -> tuple[float, ...]:
    return tuple(round(v, 2) for v in denormalize(tensor, p)[:, y, x].tolist())


@pytest.mark.parametrize("mode", ["squish", "crop", "pad"])
@pytest.mark.parametrize(("size", "expected"), [(64, (64, 64)), ((48, 80), (48, 80)), ((80, 48), (80, 48))])
@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_dtype(cat: Image.Image, mode: str, size, expected, train: bool) -> None:
    transform = build_transform(pre(size, mode), train=train, augment=AugmentConfig.preset("strong"))
    for image in (cat, cat.transpose(Image.Transpose.TRANSPOSE)):  # wide and tall
        out = transform(image)
        assert out.shape == (3, *expected) and out.dtype == torch.float32


def test_squish_keeps_all_content() -> None:
    p = pre((32, 96), "squish")
    out = build_transform(p)(thirds((300, 100)))
    assert colour_at(out, p, 16, 4) == (1.0, 0.0, 0.0)
    assert colour_at(out, p, 16, 48) == (0.0, 1.0, 0.0)
    assert colour_at(out, p, 16, 92) == (0.0, 0.0, 1.0)


def test_squish_ignores_aspect() -> None:
    p = pre((64, 64), "squish")
    out = build_transform(p)(thirds((300, 100)))
    assert colour_at(out, p, 32, 4) == (1.0, 0.0, 0.0) and colour_at(out, p, 32, 60) == (0.0, 0.0, 1.0)


def test_pad_keeps_aspect_with_zero_bands(cat: Image.Image) -> None:
    p = pre(64, "pad")
    out = build_transform(p)(cat)  # 451x300 fits as 64x43, bands of 10 and 11 rows
    band = ((0.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)
    assert torch.allclose(out[:, :10], band.expand(3, 10, 64)) and torch.allclose(out[:, 53:], band.expand(3, 11, 64))
    expected = v2.functional.to_dtype(
        v2.functional.to_image(cat.resize((64, 43), Image.Resampling.BICUBIC)), torch.float32, scale=True
    )
    assert torch.allclose(denormalize(out, p)[:, 10:53], expected, atol=1e-5)


def test_pad_tall_image_gets_side_bands() -> None:
    p = pre((30, 90), "pad")
    out = build_transform(p)(thirds((100, 300)))  # 100 wide x 300 high -> 10 wide, centred at columns 40..49
    assert colour_at(out, p, 15, 10) == (0.0, 0.0, 0.0) and colour_at(out, p, 15, 80) == (0.0, 0.0, 0.0)
    assert colour_at(out, p, 2, 45) == (1.0, 0.0, 0.0) and colour_at(out, p, 27, 45) == (0.0, 0.0, 1.0)


def test_resize_pad_works_on_tensors() -> None:
    image = torch.full((3, 100, 200), 255, dtype=torch.uint8)
    out = ResizePad((50, 50))(image)
    assert out.shape == (3, 50, 50)
    assert int(out[:, :12].max()) == 0 and int(out[:, 38:].max()) == 0 and int(out[:, 13:37].min()) == 255


def test_crop_center_crops() -> None:
    p = pre(64, "crop", crop_pct=1.0)
    out = build_transform(p)(thirds((400, 100)))  # shorter side to 64: 256 wide, the crop is inside the green
    assert torch.allclose(denormalize(out, p), torch.tensor(GREEN, dtype=torch.float32).view(3, 1, 1) / 255)


def test_crop_matches_timm_style_eval_resize(cat: Image.Image) -> None:
    p = pre(64, "crop")  # crop_pct 0.875: shorter side 300 -> floor(64 / 0.875) = 73, so 109x73, centre 64x64
    expected = cat.resize((109, 73), Image.Resampling.BICUBIC).crop((22, 4, 86, 68))
    expected_tensor = v2.functional.to_dtype(v2.functional.to_image(expected), torch.float32, scale=True)
    assert torch.allclose(denormalize(build_transform(p)(cat), p), expected_tensor, atol=1e-5)


def test_crop_non_square_target_covers_without_padding(cat: Image.Image) -> None:
    p = pre((20, 200), "crop")  # much wider than the photo: the resize must cover 200 columns
    out = denormalize(build_transform(p)(cat), p)
    assert out.shape == (3, 20, 200) and float(out.amax(dim=(0, 1)).min()) > 0.05  # no black padded columns


def test_normalisation_uses_given_mean_and_std() -> None:
    p = Preprocessing(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = build_transform(p)(Image.new("RGB", (40, 30), (128, 128, 128)))
    assert torch.allclose(out, torch.zeros_like(out), atol=0.01)
    p = Preprocessing(image_size=16, mean=(0.0, 0.25, 1.0), std=(1.0, 0.25, 0.5))
    out = build_transform(p)(Image.new("RGB", (40, 30), (255, 255, 255)))
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, 3.0, 0.0]))


def test_denormalize_batches(cat: Image.Image) -> None:
    p = pre(32, "squish")
    batch = torch.stack([build_transform(p)(cat)] * 2)  # (2, 3, 32, 32)
    back = denormalize(batch, p)
    assert back.shape == batch.shape and float(back.min()) >= 0 and float(back.max()) <= 1


@pytest.mark.parametrize("mode", ["squish", "crop", "pad"])
def test_train_is_random_and_seedable_eval_is_not(cat: Image.Image, mode: str) -> None:
    p = pre(48, mode)
    train = build_transform(p, train=True, augment=AugmentConfig.preset("standard"))
    assert not torch.equal(train(cat), train(cat))
    torch.manual_seed(7)
    first = train(cat)
    torch.manual_seed(7)
    assert torch.equal(first, train(cat))
    evaluate = build_transform(p)
    assert torch.equal(evaluate(cat), evaluate(cat))


@pytest.mark.parametrize("augment", [None, AugmentConfig.preset("none")])
def test_train_without_augmentation_equals_eval(cat: Image.Image, augment: AugmentConfig | None) -> None:
    for mode in ("squish", "crop", "pad"):
        p = pre(48, mode)
        assert torch.equal(build_transform(p, train=True, augment=augment)(cat), build_transform(p)(cat))


def test_augment_settings_pick_the_steps() -> None:
    names = lambda t: [type(s).__name__ for s in t.transforms]  # noqa: E731
    strong = names(build_transform(pre(32), train=True, augment=AugmentConfig.preset("strong")))
    assert strong[-1] == "RandomErasing" and strong.index("Normalize") < strong.index("RandomErasing")
    assert {"RandomResizedCrop", "RandomRotation", "ColorJitter", "TrivialAugmentWide"} <= set(strong)
    standard = names(build_transform(pre(32, "crop"), train=True, augment=AugmentConfig.preset("standard", vflip=True)))
    assert standard[:3] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomVerticalFlip"]
    assert "RandomRotation" not in standard and "ColorJitter" not in standard
    light = names(build_transform(pre(32), train=True, augment=AugmentConfig.preset("light")))
    assert "RandomHorizontalFlip" in light and "RandomResizedCrop" not in light
    assert "RandomResizedCrop" not in names(build_transform(pre(32), train=True, augment=AugmentConfig(scale=(1, 1))))
    assert names(build_transform(pre(32), train=False, augment=AugmentConfig.preset("strong")))[0] == "Resize"


def test_preprocessing_round_trips_through_json() -> None:
    p = pre((48, 80), "pad", interpolation="bilinear", crop_pct=0.9)
    restored = Preprocessing.from_dict(json.loads(json.dumps(p.to_dict())))
    assert restored == p and isinstance(restored.image_size, tuple) and isinstance(restored.mean, tuple)
    assert p.to_dict()["image_size"] == [48, 80]


def test_preprocessing_validates() -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape("`resize_mode` must be one of 'squish', 'crop', 'pad'. Received: resize_mode='stretch'"),
    ):
        pre(32, "stretch")
    with pytest.raises(ConfigError, match="interpolation"):
        pre(32, interpolation="lanczos")
    with pytest.raises(ConfigError, match="crop_pct"):
        pre(32, crop_pct=0.0)
    with pytest.raises(ConfigError, match="image_size"):
        pre((32, 0))
    with pytest.raises(ConfigError, match="std"):
        Preprocessing(image_size=32, mean=IMAGENET_MEAN, std=(0.2, 0.0, 0.2))
    with pytest.raises(ConfigError, match="unknown key"):
        Preprocessing.from_dict({**pre().to_dict(), "extra": 1})


def test_from_timm_models() -> None:
    timm = pytest.importorskip("timm")
    lite = Preprocessing.from_timm(timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0))
    assert lite.mean == lite.std == (0.5, 0.5, 0.5) and lite.interpolation == "bicubic"
    assert lite.image_size == (224, 224) and lite.resize_mode == "squish"
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0)
    p = Preprocessing.from_timm(resnet, image_size=160, resize_mode="crop")
    assert p.mean == IMAGENET_MEAN and p.std == IMAGENET_STD
    assert (p.image_size, p.resize_mode, p.crop_pct) == ((160, 160), "crop", resnet.pretrained_cfg["crop_pct"])


def test_from_timm_config_dict() -> None:
    cfg = {"input_size": (3, 256, 192), "mean": [0.1, 0.2, 0.3], "std": [0.4] * 3, "interpolation": "bilinear"}
    p = Preprocessing.from_timm(cfg)
    assert (p.image_size, p.mean, p.interpolation, p.crop_pct) == ((256, 192), (0.1, 0.2, 0.3), "bilinear", 0.875)
