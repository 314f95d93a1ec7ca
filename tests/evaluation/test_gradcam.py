"""Grad-CAM points at the evidence: a hand-made model whose answer depends on a known image region."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visiontune.data.transforms import Preprocessing
from visiontune.errors import ModelError
from visiontune.evaluation.gradcam import grad_cam, unavailable_reason
from visiontune.models.classifier import Classifier
from visiontune.models.fitted import FeatureClassifier, ForestHead, KNNHead, LinearHead
from visiontune.models.heads import ClassifierHead

# class 0 is "more red than green", class 1 the opposite; blue is ignored
WEIGHTS = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])


class PoolBackbone(nn.Module):
    """(B, 3, 32, 32) -> (B, 3, 4, 4): each cell of the feature map is the mean colour of an 8x8 patch."""

    num_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 8)


def _classifier() -> Classifier:
    head = ClassifierHead(3, 2, drop_rate=0.0)
    with torch.no_grad():
        head.fc.weight.copy_(WEIGHTS)
        head.fc.bias.zero_()
    pre = Preprocessing(image_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return Classifier(PoolBackbone(), head, preprocessing=pre, arch={"backbone": "pool", "pool": "avg"}).eval()


def _image(*, red: tuple[slice, slice], green: tuple[slice, slice] | None = None) -> torch.Tensor:
    image = torch.zeros(3, 32, 32)
    image[0][red] = 1.0
    if green is not None:
        image[1][green] = 1.0
    return image


def _quadrants(cam: torch.Tensor) -> dict[str, float]:
    return {
        "top_left": float(cam[:16, :16].mean()),
        "bottom_right": float(cam[16:, 16:].mean()),
        "left": float(cam[:, :16].mean()),
        "right": float(cam[:, 16:].mean()),
    }


def test_each_class_lights_up_its_own_evidence() -> None:
    image = _image(red=(slice(0, 16), slice(0, 16)), green=(slice(16, 32), slice(16, 32)))
    cams = grad_cam(_classifier(), image.expand(2, -1, -1, -1), torch.tensor([0, 1]))
    assert cams.shape == (2, 32, 32) and float(cams.min()) >= 0 and float(cams.max()) == pytest.approx(1.0)
    red, green = _quadrants(cams[0]), _quadrants(cams[1])
    assert red["top_left"] > 0.8 and red["bottom_right"] < 0.1
    assert green["bottom_right"] > 0.8 and green["top_left"] < 0.1


def test_frozen_feature_head_with_mirror_averaging_maps_back_to_the_image() -> None:
    head = LinearHead(3, 2)
    with torch.no_grad():
        head.fc.weight.copy_(WEIGHTS)
        head.fc.bias.zero_()
    model = FeatureClassifier.wrap(_classifier(), head, pool="avg", tta=True).eval()
    assert not any(p.requires_grad for p in model.parameters())
    image = _image(red=(slice(8, 24), slice(0, 12)))  # red on the left only
    cam = _quadrants(grad_cam(model, image[None], torch.tensor([0]))[0])
    # the mirrored view saw the red on the right; its map is flipped back, so all evidence stays left
    assert cam["left"] > 5 * cam["right"]


@pytest.mark.parametrize(
    ("head", "words"),
    [
        (KNNHead(3, 2, num_train=4, k=2), "k-NN"),
        (ForestHead(3, 2, num_trees=2, num_nodes=3, depth=1), "random forest"),
    ],
)
def test_heads_without_a_gradient_are_named(head: nn.Module, words: str) -> None:
    model = FeatureClassifier.wrap(_classifier(), head, pool="avg")
    reason = unavailable_reason(model)
    assert reason is not None and words in reason and "Grad-CAM" in reason
    with pytest.raises(ModelError, match=words):
        grad_cam(model, torch.zeros(1, 3, 32, 32), torch.tensor([0]))
    assert unavailable_reason(FeatureClassifier.wrap(_classifier(), LinearHead(3, 2), pool="avg")) is None
