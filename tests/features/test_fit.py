"""method="features" end to end: run folder, bundle, cache reuse, views and TTA."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import write_class_folders
from visiontune.bundle import load_bundle
from visiontune.config import DataConfig, FeaturesConfig, ModelConfig, RunConfig, TrainConfig
from visiontune.data.dataset import load_data
from visiontune.data.images import open_image
from visiontune.data.transforms import build_transform
from visiontune.errors import ConfigError
from visiontune.features import fit as fit_module
from visiontune.training.pipeline import TrainResult, train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, fashion: dict) -> Path:
    """train/<3 classes> x 20 and test/<3 classes> x 6 real images."""
    root = tmp_path_factory.mktemp("features") / "data"
    write_class_folders(root / "train", fashion, per_class=20)
    write_class_folders(root / "test", fashion, per_class=6, split="test")
    return root


def _config(data: Path, out: Path, augment: str = "standard", **features: object) -> RunConfig:
    return RunConfig(
        DataConfig(source=str(data), valid_pct=0.25),
        ModelConfig(image_size=32),  # efficientnet_lite0 with its ImageNet weights: this is transfer
        TrainConfig(method="features", augment=augment),
        features=FeaturesConfig(**features),  # type: ignore[arg-type]
        out=str(out),
    )


def _bundle_logits(run: Path, data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Our own forward pass, independent of the package's loaders: PIL decode, the bundle's transform, one batch."""
    model, meta = load_bundle(run)
    samples = load_data(data, DataConfig(valid_pct=0.25)).split(split)
    transform = build_transform(meta.preprocessing)
    images = torch.stack([transform(open_image(s.path)) for s in samples])
    with torch.no_grad():
        logits = model(images)
    return logits, torch.tensor([meta.classes.index(s.label) for s in samples])


def test_run_folder_bundle_and_cache(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a feature cache of its own: the session's shared runs embed some of the same Fashion-MNIST images
    monkeypatch.setenv("VISIONTUNE_CACHE_DIR", str(tmp_path / "cache"))
    result = train(_config(data, tmp_path / "a", heads=("logreg", "knn")))
    assert isinstance(result, TrainResult) and result.best_head in ("logreg", "knn") and result.best_epoch is None
    run = result.run_dir
    for name in ("config.yaml", "run.json", "classes.json", "splits.csv", "heads.csv", "results.json"):
        assert (run / name).is_file(), name
    with open(run / "heads.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["head"] for r in rows] == ["logreg", "knn"] and sum(r["best"] == "True" for r in rows) == 1
    info = json.loads((run / "run.json").read_text())
    assert len(info["data_manifest_sha256"]) == 64 and info["features"]["extracted"] == 78
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["features"]["heads"] == ["logreg", "knn"] and config["train"]["method"] == "features"
    assert result.metrics["test_accuracy"] > 0.8 and result.metrics["valid_accuracy"] > 0.8
    finetune_metrics = {"loss", "accuracy", "balanced_accuracy", "error_rate", "macro_f1", "ece"}
    assert {f"{s}_{m}" for s in ("valid", "test") for m in finetune_metrics} <= set(result.metrics)
    # the bundle maps images to the same logits as the head on cached features
    logits, targets = _bundle_logits(run, data, "test")
    accuracy = float((logits.argmax(1) == targets).float().mean())
    assert accuracy == pytest.approx(result.metrics["test_accuracy"], abs=1e-6)
    _, meta = load_bundle(run)
    assert meta.metrics["head"] == result.best_head and meta.training["method"] == "features"
    # a second identical run extracts nothing and gets the same numbers
    again = train(_config(data, tmp_path / "b", heads=("logreg", "knn")))
    assert again.extraction["extracted"] == 0 and again.extraction["reused"] == 78
    assert again.metrics == result.metrics


def test_default_heads_views_and_tta(data: Path, tmp_path: Path) -> None:
    result = train(_config(data, tmp_path / "run", views=2, tta=True))
    assert [row["head"] for row in result.heads] == ["logreg", "knn", "linear"]
    assert result.extraction["extracted"] == 45 * 2 + 15 + 18  # two views of the 45 training images
    logits, targets = _bundle_logits(result.run_dir, data, "valid")
    valid = float((logits.argmax(1) == targets).float().mean())
    assert valid == pytest.approx(result.metrics["valid_accuracy"], abs=1e-6)  # the bundle averages mirrors too
    assert np.isfinite(result.metrics["valid_loss"])


def test_features_settings_are_checked(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="heads"):
        FeaturesConfig(heads=("knn", "forest"))
    assert FeaturesConfig(heads="knn, svm").heads == ("knn", "svm")  # type: ignore[arg-type]
    assert RunConfig.from_dict(_config(data, tmp_path).to_dict()).features.heads == ()
    with pytest.raises(ConfigError, match="--augment"):
        train(_config(data, tmp_path / "views", views=2, augment="none"))
    with pytest.raises(ConfigError, match="resume"):
        train(_config(data, tmp_path / "resume"), resume=tmp_path / "resume")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(0, 10))
def test_every_prefix_of_the_balanced_order_is_balanced(labels: list[int], seed: int) -> None:
    array = np.array(labels)
    order = fit_module.balanced_order(array, seed)
    assert sorted(order) == list(range(len(labels)))  # each image exactly once
    sizes = {c: int((array == c).sum()) for c in set(labels)}
    for end in range(1, len(order) + 1):
        counts = {c: int((array[order[:end]] == c).sum()) for c in sizes}
        open_classes = [counts[c] for c in sizes if counts[c] < sizes[c]]  # classes with images left
        assert not open_classes or max(counts.values()) - min(open_classes) <= 1


def test_a_deadline_embeds_the_other_splits_whole_and_training_images_while_time_lasts(
    data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fake clock: every embedded image costs 0.01 s. Other splits first (33 images), then chunks of 10."""
    monkeypatch.setenv("VISIONTUNE_CACHE_DIR", str(tmp_path / "cache"))
    clock = SimpleNamespace(now=0.0)
    real = fit_module.extract_features

    def timed(paths: list[str], *args: object, **kwargs: object) -> object:
        clock.now += 0.01 * len(paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(fit_module, "extract_features", timed)
    monkeypatch.setattr(fit_module, "CHUNK", 10)
    config = _config(data, tmp_path / "run", augment="none", heads=("logreg",))
    loaded = load_data(data, config.data)
    from visiontune.models import create_classifier

    model = create_classifier("efficientnet_lite0", 3, image_size=32)
    # 0.33 s for valid + test, then 0.1 s a chunk: two chunks end by 0.53, a third would end at 0.63
    partial = fit_module.embed_splits(model, loaded, config, deadline=0.58, clock=lambda: clock.now)
    whole = fit_module.embed_splits(model, loaded, config)
    assert partial.train_images == 20 and partial.train_total == 45
    assert partial.summary()["train_images"] == {"embedded": 20, "of": 45}
    for split in ("valid", "test"):  # calibration and the scores need every one of these
        np.testing.assert_array_equal(partial.x[split], whole.x[split])
    kept = fit_module.balanced_order(whole.y["train"], config.train.seed)[:20]
    np.testing.assert_array_equal(partial.x["train"], whole.x["train"][kept])  # rows match their labels
    np.testing.assert_array_equal(partial.y["train"], whole.y["train"][kept])
    assert sorted(np.bincount(partial.y["train"]).tolist()) == [6, 7, 7]
    assert "train_images" not in whole.summary() and whole.train_images == 45
    # past the deadline before any training image: the first chunk still runs, so there is a model
    assert fit_module.embed_splits(model, loaded, config, deadline=0.0, clock=lambda: clock.now).train_images == 10


def test_a_features_run_out_of_time_bundles_the_heads_of_what_was_embedded(
    data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(fit_module, "CHUNK", 12)
    config = _config(data, tmp_path / "run", augment="none", heads=("logreg",))
    config = config.replace("train", budget="1s")  # gone before extraction starts: one chunk of training images
    result = train(config)
    assert result.extraction["train_images"] == {"embedded": 12, "of": 45}
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["features"]["train_images"] == {"embedded": 12, "of": 45} and info["plan"]["budget"] == "1s"
    _, meta = load_bundle(result.run_dir)
    assert meta.calibration.detector is not None and len(meta.calibration.detector.bank) == 12
    assert result.metrics["valid_accuracy"] > 0.5  # 4 images a class, pretrained features: well above chance
