"""extract_features: the pooled features the model computes, in input order, each image embedded once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import write_class_folders
from visiontune.config import AugmentConfig
from visiontune.data.images import open_image
from visiontune.data.transforms import build_transform
from visiontune.errors import ConfigError
from visiontune.features import View, extract_features, hash_files
from visiontune.models import create_classifier, pool_features


@pytest.fixture
def paths(tmp_path: Path, fashion: dict) -> list[Path]:
    return sorted(write_class_folders(tmp_path / "data", fashion, per_class=4).rglob("*.png"))


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_classifier("small_cnn", 3, pretrained=False, image_size=32, pool="avgmax")


def _by_hand(paths: list[Path], model: torch.nn.Module, *, flip: bool = False) -> np.ndarray:
    transform = build_transform(model.preprocessing)
    images = torch.stack([transform(open_image(p)) for p in paths])
    if flip:
        images = images.flip(-1)
    with torch.inference_mode():
        return pool_features(model.eval().forward_features(images), "avgmax").numpy()


def test_features_are_the_pooled_backbone_output(paths: list[Path], model: torch.nn.Module) -> None:
    result = extract_features(paths, model, cache=False, batch_size=5)
    assert result.features.shape == (12, 2 * model.num_features) and result.features.dtype == np.float32
    np.testing.assert_allclose(result.features, _by_hand(paths, model), atol=1e-5)


def test_tta_averages_the_mirror_image(paths: list[Path], model: torch.nn.Module) -> None:
    result = extract_features(paths, model, tta=True, cache=False)
    expected = (_by_hand(paths, model) + _by_hand(paths, model, flip=True)) / 2
    np.testing.assert_allclose(result.features, expected, atol=1e-5)


def test_views_are_seeded_by_content(paths: list[Path], model: torch.nn.Module, tmp_path: Path) -> None:
    view = View(1, AugmentConfig.preset("standard"), seed=3)
    a = extract_features(paths, model, view=view, cache=False).features
    b = extract_features(paths[::-1], model, view=view, cache=False).features[::-1]  # other order, same views
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a, extract_features(paths, model, cache=False).features)
    assert not np.allclose(a, extract_features(paths, model, view=View(2, view.augment, 3), cache=False).features)
    with pytest.raises(ConfigError, match="augment"):
        View(1, AugmentConfig.preset("none"))


def test_duplicates_are_embedded_once(paths: list[Path], model: torch.nn.Module, tmp_path: Path) -> None:
    copy = tmp_path / "copy.png"
    shutil.copy(paths[0], copy)
    result = extract_features([paths[0], paths[1], copy], model, cache=False)
    assert result.extracted == 2
    np.testing.assert_array_equal(result.features[0], result.features[2])


def test_given_hashes_are_trusted_for_lookup_but_not_for_storing(
    paths: list[Path], model: torch.nn.Module, tmp_path: Path
) -> None:
    """A file that changed after the scan is cached under the hash of what was really decoded."""
    stale = hash_files([str(paths[1])])  # the hash of another file's content
    extract_features(paths[:1], model, hashes=stale, cache=tmp_path / "cache")
    assert extract_features(paths[:1], model, cache=tmp_path / "cache").reused == 1  # stored under its true hash
    assert extract_features(paths[1:2], model, cache=tmp_path / "cache").reused == 0
