"""`evaluate()` on real trained bundles: the right images, numbers equal to our own computation, every output."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visiontune
from tests.conftest import write_class_folders
from visiontune.bundle import load_bundle
from visiontune.calibration import Calibration, expected_calibration_error
from visiontune.data.transforms import build_transform
from visiontune.errors import ConfigError, DatasetError
from visiontune.evaluation.evaluate import EvalConfig, EvalResult, default_out, evaluate
from visiontune.predict import Predictor
from visiontune.runs import RunFolder


def _split_paths(run: Path, split: str) -> list[str]:
    with open(run / "splits.csv", newline="") as handle:
        return sorted(str(Path(r["path"]).absolute()) for r in csv.DictReader(handle) if r["split"] == split)


def _logits(model_path: Path, paths: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Our own forward pass: PIL decode, the bundle's transform, one batch; and the class names."""
    model, meta = load_bundle(model_path)
    transform = build_transform(meta.preprocessing)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model(batch).float(), meta.classes


def _auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    return float((known[:, None] > unknown[None, :]).mean() + 0.5 * (known[:, None] == unknown[None, :]).mean())


def test_scores_exactly_the_runs_test_split(evaluated: EvalResult, finetuned_run: Path) -> None:
    test_paths = _split_paths(finetuned_run, "test")
    assert sorted(evaluated.paths) == test_paths
    assert not set(evaluated.paths) & set(_split_paths(finetuned_run, "train"))
    metrics = json.loads((evaluated.out_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["own_data"] is True and metrics["images"] == len(test_paths)


def test_metrics_json_equals_an_independent_computation(evaluated: EvalResult, finetuned_run: Path) -> None:
    metrics = json.loads((evaluated.out_dir / "metrics.json").read_text())
    logits, classes = _logits(finetuned_run / "model", evaluated.paths)
    torch.testing.assert_close(evaluated.logits, logits, atol=1e-4, rtol=1e-4)
    x, y = logits.double().numpy(), evaluated.targets.numpy()
    assert [classes[t] for t in y] == [Path(p).parent.name for p in evaluated.paths]  # labels from the folders
    log_probs = x - x.max(1, keepdims=True) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
    assert metrics["accuracy"] == pytest.approx(np.mean(x.argmax(1) == y), abs=1e-9)
    assert metrics["log_loss"] == pytest.approx(-log_probs[np.arange(len(y)), y].mean(), rel=1e-4)
    recorded = json.loads((finetuned_run / "model" / "bundle.json").read_text())
    assert metrics["accuracy"] == pytest.approx(recorded["metrics"]["test_accuracy"], abs=1e-6)  # what training saw
    temperature = recorded["calibration"]["temperature"]
    assert metrics["temperature"] == temperature
    assert metrics["ece_after"] == pytest.approx(
        expected_calibration_error((logits / temperature).softmax(1), evaluated.targets), abs=1e-5
    )
    for name in classes:
        support = sum(Path(p).parent.name == name for p in evaluated.paths)
        assert metrics["per_class"][name]["support"] == support
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == len(y) and np.trace(matrix) == np.sum(x.argmax(1) == y)
    assert sum(p["count"] for p in metrics["most_confused"]) == matrix.sum() - np.trace(matrix)


@pytest.mark.parametrize("fixture", ["finetuned_run", "features_run"])
def test_evaluate_scores_exactly_what_predict_serves(
    fixture: str, request: pytest.FixtureRequest, trained_data: Path, tmp_path: Path
) -> None:
    """The report's probabilities are predict's, image for image: one loader, one forward pass, one calibration."""
    run: Path = request.getfixturevalue(fixture)
    result = evaluate(run, trained_data, EvalConfig(out=str(tmp_path / "eval"), top_losses=0))
    calibration = Calibration.from_dict(json.loads((run / "model" / "bundle.json").read_text())["calibration"])
    served = visiontune.load(run, device="cpu").predict(result.paths, topk=1)
    reported = calibration.probabilities(result.logits).max(dim=1)
    assert [p.path for p in served] == result.paths
    assert [p.label for p in served] == _names(run, reported.indices)
    served_p = torch.tensor([p.probability for p in served], dtype=torch.float64)
    torch.testing.assert_close(served_p, reported.values.double(), atol=1e-6, rtol=0)  # predict rounds to 6 places
    accuracy = np.mean([p.label == Path(path).parent.name for p, path in zip(served, result.paths, strict=True)])
    assert result.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-12)


def _names(run: Path, indices: torch.Tensor) -> list[str]:
    classes = json.loads((run / "classes.json").read_text())
    return [classes[i] for i in indices.tolist()]


def test_misclassified_csv_lists_every_mistake(evaluated: EvalResult, finetuned_run: Path) -> None:
    logits, classes = _logits(finetuned_run / "model", evaluated.paths)
    temperature = json.loads((evaluated.out_dir / "metrics.json").read_text())["temperature"]
    probs = (logits / temperature).softmax(1)
    expected = {
        (path, classes[int(t)], classes[int(p.argmax())]): float(p.max())
        for path, t, p in zip(evaluated.paths, evaluated.targets, probs, strict=True)
        if int(p.argmax()) != int(t)
    }
    with open(evaluated.out_dir / "misclassified.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(evaluated.out_dir / "misclassified.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["path", "actual", "predicted", "probability"]  # even with no rows
    assert len(rows) == len(expected)
    assert {(r["path"], r["actual"], r["predicted"]) for r in rows} == set(expected)
    for r in rows:
        assert float(r["probability"]) == pytest.approx(expected[(r["path"], r["actual"], r["predicted"])], abs=1e-4)
        assert Path(r["path"]).is_file()
    assert [float(r["probability"]) for r in rows] == sorted((float(r["probability"]) for r in rows), reverse=True)


def test_figures_top_losses_and_gradcam(evaluated: EvalResult) -> None:
    for name in ("confusion_matrix", "top_losses", "gradcam", "reliability", "ood_scores"):
        with Image.open(evaluated.out_dir / f"{name}.png") as image:
            assert image.format == "PNG" and min(image.size) > 200
    top = evaluated.metrics["top_losses"]
    assert len(top["images"]) == 6 and top["gradcam"]["applies"] is True
    losses = [row["loss"] for row in top["images"]]
    assert losses == sorted(losses, reverse=True)
    everyone = -torch.log((evaluated.logits / evaluated.metrics["temperature"]).softmax(1)).gather(
        1, evaluated.targets[:, None]
    )
    assert losses[0] == pytest.approx(float(everyone.max()), rel=1e-4)  # the worst image heads the grid
    assert all(row["probability_actual"] == pytest.approx(np.exp(-row["loss"]), rel=1e-4) for row in top["images"])


def test_ood_auroc_and_flagged_shares(evaluated: EvalResult, finetuned_run: Path, ood_folder: Path) -> None:
    ood = json.loads((evaluated.out_dir / "metrics.json").read_text())["ood"]
    files = sorted(str(p.absolute()) for p in ood_folder.rglob("*.png"))
    assert ood["images"] == len(files) == 8
    calibration = json.loads((finetuned_run / "model" / "bundle.json").read_text())["calibration"]
    t = calibration["temperature"]
    known = (evaluated.logits / t).softmax(1).max(1).values.numpy()
    ood_logits = _logits(finetuned_run / "model", files)[0]
    assert sorted(evaluated.ood_paths) == files
    order = [evaluated.ood_paths.index(f) for f in files]
    torch.testing.assert_close(evaluated.ood_logits[order], ood_logits, atol=1e-4, rtol=1e-4)
    unknown = (ood_logits / t).softmax(1).max(1).values.numpy()
    assert ood["score"] == "knn"  # the bundle's default: the feature-space score (bench/ood_auroc.py chose it)
    assert ood["auroc_by_score"]["msp"] == pytest.approx(_auroc(known, unknown), abs=1e-6)
    assert set(ood["auroc_by_score"]) == set(ood["fpr_at_95_tpr_by_score"]) == {"msp", "energy", "knn"}
    predictor = Predictor.load(finetuned_run, device="cpu")  # what predict would say about the same images
    assert ood["flagged_ood"] == pytest.approx(np.mean([p.unknown for p in predictor.predict(files)]), abs=1e-6)
    assert ood["threshold"] == calibration["unknown"]["thresholds"]["knn"]


def test_features_bundle_on_a_copy_of_its_data(features_run: Path, trained_data: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(trained_data, tmp_path / "moved" / "data")  # same relative paths, another place
    result = evaluate(features_run, copy, EvalConfig(out=str(tmp_path / "eval"), split="valid", top_losses=3))
    valid = [Path(p).relative_to(trained_data).as_posix() for p in _split_paths(features_run, "valid")]
    assert sorted(Path(p).relative_to(copy).as_posix() for p in result.paths) == valid
    assert result.metrics["own_data"] is True and result.metrics["split"] == "valid"
    recorded = json.loads((features_run / "model" / "bundle.json").read_text())["metrics"]
    assert result.metrics["accuracy"] == pytest.approx(recorded["valid_accuracy"], abs=1e-6)
    assert result.metrics["top_losses"]["gradcam"]["applies"] is True  # logistic regression: a linear head
    assert (tmp_path / "eval" / "gradcam.png").is_file() and (tmp_path / "eval" / "report.html").is_file()


def test_other_data_is_scored_whole(finetuned_run: Path, fashion: dict, tmp_path: Path) -> None:
    other = write_class_folders(tmp_path / "other", fashion, per_class=3, split="test")
    result = evaluate(finetuned_run, other, EvalConfig(out=str(tmp_path / "eval"), top_losses=0))
    assert result.metrics["own_data"] is False and result.metrics["split"] == "all" and result.metrics["images"] == 9
    assert not (tmp_path / "eval" / "top_losses.png").exists()


def test_training_images_are_never_scored(finetuned_run: Path, trained_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--split train would score images the model was trained on"):
        evaluate(finetuned_run, trained_data, EvalConfig(split="train", out=str(tmp_path)))
    with pytest.raises(DatasetError, match="none of the run's test images are here"):
        evaluate(finetuned_run, trained_data / "train", EvalConfig(out=str(tmp_path)))  # a sub-folder of its data


def test_classes_must_match_the_model(finetuned_run: Path, fashion: dict, tmp_path: Path) -> None:
    other = write_class_folders(tmp_path / "other", fashion, classes=(0, 1, 2), per_class=2, split="test")
    with pytest.raises(DatasetError, match="no images of sneaker; classes the model doesn't know: pullover"):
        evaluate(finetuned_run, other, EvalConfig(out=str(tmp_path / "eval")))


def test_older_bundle_without_threshold_and_with_a_temperature(
    features_run: Path, trained_data: Path, ood_folder: Path, tmp_path: Path
) -> None:
    run = shutil.copytree(features_run, tmp_path / "run")
    meta_path = run / "model" / "bundle.json"
    meta = json.loads(meta_path.read_text())
    meta["calibration"] = {"temperature": 2.0, "unknown_threshold": None}  # the flat form bundles used to have
    meta_path.write_text(json.dumps(meta))
    result = evaluate(run, trained_data, EvalConfig(ood=str(ood_folder), top_losses=2))
    assert result.out_dir == run / "eval"  # a run folder's evaluation lives in it
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["temperature"] == 2.0 and m["calibration_fitted"] is False
    assert m["ece_before"] == pytest.approx(expected_calibration_error(result.logits.softmax(1), result.targets))
    assert m["ece_after"] == pytest.approx(expected_calibration_error((result.logits / 2).softmax(1), result.targets))
    assert m["ood"]["threshold"] is None and m["ood"]["flagged_ood"] is None
    known = (result.logits / 2).softmax(1).max(1).values.numpy()  # the top probability at the bundle's temperature
    unknown = (result.ood_logits / 2).softmax(1).max(1).values.numpy()
    assert m["ood"]["auroc_by_score"]["msp"] == pytest.approx(_auroc(known, unknown), abs=1e-6)
    assert m["ood"]["auroc"] == m["ood"]["auroc_by_score"][m["ood"]["score"]]
    assert m["unknown"]["threshold"] is None and "no unknown threshold" in m["unknown"]["note"]


def test_options_are_checked_at_once() -> None:
    with pytest.raises(ConfigError, match=r"`split` must be one of .* Received: split='tests'"):
        EvalConfig(split="tests")
    with pytest.raises(ConfigError, match="top_losses"):
        EvalConfig(top_losses=-1)


def test_default_output_folder() -> None:
    run = Path("runs/demo")
    assert default_out(run, RunFolder(run)) == run / "eval"
    assert default_out(run / "model", RunFolder(run)) == Path("eval")
    assert default_out(Path("exported/model"), None) == Path("eval")
