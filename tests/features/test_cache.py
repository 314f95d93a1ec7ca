"""The feature cache: hits, partial hits, and never a stale vector after a file or the backbone changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import write_class_folders
from visiontune.features import FeatureCache, extract_features, weights_digest
from visiontune.features import cache as cache_module
from visiontune.models import create_classifier


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_classifier("small_cnn", 3, pretrained=False, image_size=32)


def _images(root: Path, fashion: dict, per_class: int = 8) -> list[Path]:
    return sorted(write_class_folders(root, fashion, per_class=per_class).rglob("*.png"))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_put_get_round_trip_and_misses(tmp_path: Path) -> None:
    cache = FeatureCache({"backbone": "x"}, tmp_path)
    vectors = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    cache.put([_digest("a"), _digest("b"), _digest("c")], vectors)
    again = FeatureCache({"backbone": "x"}, tmp_path)  # a new process reads what the first wrote
    found_vectors, found = again.get([_digest("c"), _digest("z"), _digest("a")])
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(found_vectors[0], vectors[2])
    np.testing.assert_array_equal(found_vectors[2], vectors[0])
    assert FeatureCache({"backbone": "y"}, tmp_path).get([_digest("a")])[1].tolist() == [False]  # other recipe


def test_shards_merge_and_damaged_files_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "MERGE_AT", 3)
    cache = FeatureCache({"backbone": "x"}, tmp_path)
    for i in range(5):
        cache.put([_digest(str(i))], np.full((1, 4), i, dtype=np.float32))
    assert len(list(cache.folder.glob("*.safetensors"))) < 3
    (cache.folder / "0-bad.safetensors").write_bytes(b"not safetensors")
    vectors, found = FeatureCache({"backbone": "x"}, tmp_path).get([_digest(str(i)) for i in range(5)])
    assert found.all() and vectors[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_second_extraction_reuses_everything(tmp_path: Path, fashion: dict) -> None:
    paths = _images(tmp_path / "data", fashion)
    model = _model()
    first = extract_features(paths, model, cache=tmp_path / "cache")
    second = extract_features(paths, model, cache=tmp_path / "cache")
    assert (first.extracted, first.reused) == (24, 0)
    assert (second.extracted, second.reused) == (0, 24)
    np.testing.assert_array_equal(first.features, second.features)


def test_new_images_are_the_only_ones_extracted(tmp_path: Path, fashion: dict) -> None:
    model = _model()
    old = _images(tmp_path / "data", fashion, per_class=6)
    extract_features(old, model, cache=tmp_path / "cache")
    every = _images(tmp_path / "data", fashion, per_class=8)  # 2 more per class
    result = extract_features(every, model, cache=tmp_path / "cache")
    assert (result.extracted, result.reused) == (6, 18)
    fresh = extract_features(every, model, cache=False)
    np.testing.assert_allclose(result.features, fresh.features, atol=1e-5)


def test_changed_file_is_extracted_again(tmp_path: Path, fashion: dict) -> None:
    paths = _images(tmp_path / "data", fashion)
    model = _model()
    before = extract_features(paths, model, cache=tmp_path / "cache")
    Image.fromarray(255 - np.asarray(Image.open(paths[0]))).save(paths[0])  # same name, new content
    after = extract_features(paths, model, cache=tmp_path / "cache")
    assert (after.extracted, after.reused) == (1, 23)
    assert not np.allclose(before.features[0], after.features[0])
    fresh = extract_features(paths[:1], model, cache=False).features[0]
    np.testing.assert_allclose(after.features[0], fresh, atol=1e-5)


def test_changed_backbone_reuses_nothing(tmp_path: Path, fashion: dict) -> None:
    paths = _images(tmp_path / "data", fashion)
    model = _model(seed=0)
    extract_features(paths, model, cache=tmp_path / "cache")
    other = _model(seed=1)  # same architecture, other weights
    assert weights_digest(other.backbone) != weights_digest(model.backbone)
    assert extract_features(paths, other, cache=tmp_path / "cache").reused == 0
    with torch.no_grad():
        model.backbone.state_dict()[next(iter(model.backbone.state_dict()))].add_(1e-3)  # one tensor nudged
    assert extract_features(paths, model, cache=tmp_path / "cache").reused == 0


def test_other_pooling_or_mirror_averaging_is_another_recipe(tmp_path: Path, fashion: dict) -> None:
    paths = _images(tmp_path / "data", fashion, per_class=2)
    model = _model()
    extract_features(paths, model, cache=tmp_path / "cache")
    assert extract_features(paths, model, pool="max", cache=tmp_path / "cache").reused == 0
    assert extract_features(paths, model, tta=True, cache=tmp_path / "cache").reused == 0
    assert extract_features(paths, model, cache=tmp_path / "cache").reused == 6


def test_another_image_size_reuses_nothing(tmp_path: Path, fashion: dict) -> None:
    """The same weights at another input size see other pixels: their vectors are never served for it."""
    paths = _images(tmp_path / "data", fashion, per_class=2)
    small = _model()
    torch.manual_seed(0)
    large = create_classifier("small_cnn", 3, pretrained=False, image_size=48)
    large.load_state_dict(small.state_dict())
    assert weights_digest(large.backbone) == weights_digest(small.backbone)  # only the image size differs
    extract_features(paths, small, cache=tmp_path / "cache")
    result = extract_features(paths, large, cache=tmp_path / "cache")
    assert (result.extracted, result.reused) == (6, 0)
    np.testing.assert_allclose(result.features, extract_features(paths, large, cache=False).features, atol=1e-5)
    assert extract_features(paths, small, cache=tmp_path / "cache").reused == 6  # each size keeps its own
