"""Ensemble: averaged probabilities, one bundle, embeddings and Grad-CAM of several members, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visiontune.bundle import BundleMeta, load_bundle, save_bundle
from visiontune.detector import STAGES, fit_knn
from visiontune.embedding import default_layout, logits_and_embeddings
from visiontune.errors import ModelError
from visiontune.evaluation.gradcam import grad_cam
from visiontune.models import Classifier, Ensemble, create_classifier
from visiontune.predict import Predictor


def _members(count: int = 2, *, classes: int = 3, size: int = 64) -> list[Classifier]:
    members = []
    for seed in range(count):
        torch.manual_seed(seed)  # each its own head, as members trained with their own seeds have
        members.append(create_classifier("efficientnet_lite0", classes, image_size=size).eval())
    return members


@pytest.fixture(scope="module")
def pair() -> Ensemble:
    return Ensemble(_members()).eval()


@pytest.fixture(scope="module")
def images(fashion: dict[str, np.ndarray]) -> torch.Tensor:
    """Six real Fashion-MNIST images as normalised (6, 3, 64, 64) inputs."""
    grey = torch.as_tensor(fashion["train_images"][:6], dtype=torch.float32) / 255.0
    x = F.interpolate(grey[:, None], size=(64, 64), mode="bilinear").repeat(1, 3, 1, 1)
    return (x - 0.5) / 0.5


def test_the_output_is_the_log_of_the_members_mean_probability(pair: Ensemble, images: torch.Tensor) -> None:
    with torch.no_grad():
        mean = torch.stack([m(images).softmax(1) for m in pair.members]).mean(0)
        out = pair(images)
    torch.testing.assert_close(out.softmax(1), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(len(images)), rtol=1e-5, atol=1e-5)
    assert out.dtype == torch.float32 and pair.num_classes == 3


def test_a_certain_member_neither_underflows_nor_takes_over() -> None:
    from visiontune.models import average_logits

    sure = torch.tensor([[200.0, -200.0]])  # probability 1 - 1e-174 for class 0
    unsure = torch.tensor([[0.0, 0.0]])
    out = average_logits([sure, unsure]).softmax(1)
    torch.testing.assert_close(out, torch.tensor([[0.75, 0.25]]))


def test_members_must_agree_on_classes_and_preprocessing() -> None:
    a, _ = _members(2)
    with pytest.raises(ModelError, match="at least 2"):
        Ensemble([a])
    with pytest.raises(ModelError, match="classes"):
        Ensemble([a, create_classifier("efficientnet_lite0", 4, image_size=64)])
    with pytest.raises(ModelError, match="preprocessing"):
        Ensemble([a, create_classifier("efficientnet_lite0", 3, image_size=96)])


def test_a_bundle_holds_every_member_and_rebuilds_the_same_ensemble(
    pair: Ensemble, images: torch.Tensor, tmp_path: Path
) -> None:
    meta = BundleMeta(arch=pair.arch, classes=["a", "b", "c"], preprocessing=pair.preprocessing)
    save_bundle(tmp_path / "model", pair, meta)
    model, loaded = load_bundle(tmp_path / "model")
    assert isinstance(model, Ensemble) and len(model.members) == 2
    assert loaded.arch["backbone"] == "efficientnet_lite0" and len(loaded.arch["ensemble"]) == 2
    assert loaded.architecture == "efficientnet_lite0 x2"  # what the report's title and serve's /info say
    with torch.no_grad():
        torch.testing.assert_close(model(images), pair(images))
    predictor = Predictor.load(tmp_path / "model", device="cpu")
    pixels = np.full((64, 64, 3), 128, dtype=np.uint8)
    [answer] = predictor.predict([pixels])
    assert answer.error is None and answer.label in ("a", "b", "c")


def test_the_embedding_is_the_members_concatenated_so_cosine_is_their_mean(
    pair: Ensemble, images: torch.Tensor
) -> None:
    assert default_layout(pair) == STAGES
    with torch.no_grad():
        outputs = logits_and_embeddings(pair, STAGES)(images)
        torch.testing.assert_close(outputs[:, :3], pair(images))
        own = [logits_and_embeddings(m, STAGES)(images)[:, 3:] for m in pair.members]
    joint = F.normalize(outputs[:, 3:], dim=1)
    mean_cosine = torch.stack([F.normalize(e, dim=1) @ F.normalize(e, dim=1).T for e in own]).mean(0)
    torch.testing.assert_close(joint @ joint.T, mean_cosine, rtol=1e-4, atol=1e-5)
    detector = fit_knn(outputs[:, 3:], embedding=STAGES)  # the k-NN bank reads these vectors as any model's
    assert detector.dim == outputs.shape[1] - 3


def test_grad_cam_averages_each_members_map_for_the_ensembles_class(pair: Ensemble, images: torch.Tensor) -> None:
    classes = pair(images).argmax(1)
    maps = grad_cam(pair, images, classes)
    assert maps.shape == (6, 64, 64) and torch.isfinite(maps).all()
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    twice = Ensemble([pair.members[0], pair.members[0]]).eval()  # two equal members: each map is the same
    single = grad_cam(twice, images, classes)
    assert single.flatten(1).amax(1).allclose(torch.ones(6))  # the mean of two equal 0..1 maps still spans to 1
    assert not torch.allclose(maps, single)  # the second member changes where the ensemble looks
