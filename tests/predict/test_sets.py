"""Prediction sets and the k-NN unknown score through Predictor; a bundle from before them still predicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import visiontune
from visiontune.cli.main import app
from visiontune.errors import ConfigError


def _images(trained_data: Path) -> list[Path]:
    return sorted((trained_data / "test").rglob("*.png"))


def test_sets_and_knn_score_from_a_fresh_bundle(features_run: Path, trained_data: Path) -> None:
    predictor = visiontune.load(features_run, device="cpu")
    assert predictor.calibration.conformal is not None and predictor.calibration.score == "knn"
    assert (features_run / "model" / "detector.safetensors").is_file()
    images = _images(trained_data)
    predictions = predictor.predict(images, topk=3)
    for p in predictions:
        assert p.prediction_set is not None and set(p.prediction_set) <= set(predictor.classes)
        assert p.score_name == "knn" and (p.score >= p.threshold) != p.unknown
    loose, tight = predictor.predict(images, coverage=0.99), predictor.predict(images, coverage=0.5)
    assert sum(map(len, (p.prediction_set for p in loose))) >= sum(map(len, (p.prediction_set for p in tight)))
    with pytest.raises(ConfigError, match="coverage"):
        predictor.predict(images[:1], coverage=1.5)


def test_an_old_bundle_predicts_without_sets(features_run: Path, trained_data: Path, tmp_path: Path) -> None:
    old = shutil.copytree(features_run / "model", tmp_path / "model")
    meta = json.loads((old / "bundle.json").read_text())
    del meta["calibration"]["conformal"]  # as bundles written before conformal calibration
    del meta["calibration"]["unknown"]["detector"]
    meta["calibration"]["unknown"]["thresholds"].pop("knn")
    meta["calibration"]["unknown"]["score"] = "msp"
    (old / "bundle.json").write_text(json.dumps(meta))
    (old / "detector.safetensors").unlink()
    predictor = visiontune.load(old, device="cpu")
    prediction = predictor.predict(_images(trained_data)[:1])[0]
    assert prediction.label is not None and prediction.prediction_set is None and prediction.score_name == "msp"
    with pytest.raises(ConfigError, match="no 'knn' detector"):
        predictor.predict(_images(trained_data)[:1], unknown_score="knn")
    result = CliRunner().invoke(app, ["predict", str(old), str(_images(trained_data)[0])], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "no prediction sets" in result.output
