"""`visiontune predict` as a user runs it: formats, folders, grids, and a non-zero exit when files fail."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.cli.test_cli import assert_one_line_error, visiontune


def test_json_has_one_object_per_input_and_failures_set_the_exit_code(
    finetuned_run: Path, trained_data: Path, tmp_path: Path
) -> None:
    good = sorted((trained_data / "test" / "trouser").glob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(good[0].read_bytes()[:50])
    proc = visiontune("predict", str(finetuned_run), *map(str, good), str(broken), "--format", "json", "-k", "2")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "1 of 3 inputs could not be read" in proc.stderr
    rows = json.loads(proc.stdout)
    keys = {"path", "predictions", "prediction_set", "unknown", "unknown_score", "error"}
    assert [set(r) for r in rows] == [keys] * 3
    assert isinstance(rows[0]["prediction_set"], list) and rows[2]["prediction_set"] is None
    assert rows[0]["unknown_score"]["name"] == "knn" and rows[2]["unknown_score"] is None
    assert [r["path"] for r in rows] == [*map(str, good), str(broken)]
    assert all(len(r["predictions"]) == 2 and r["error"] is None for r in rows[:2])
    assert set(rows[0]["predictions"][0]) == {"label", "probability"}
    assert rows[2]["predictions"] == [] and rows[2]["error"]
    ok = visiontune("predict", str(finetuned_run), str(good[0]), "--format", "json")
    assert ok.returncode == 0 and json.loads(ok.stdout)[0]["error"] is None


def test_a_folder_writes_the_csv_of_all_predictions_and_a_grid(
    finetuned_run: Path, trained_data: Path, tmp_path: Path
) -> None:
    folder = trained_data / "test"
    proc = visiontune("predict", str(finetuned_run), str(folder), "--grid", str(tmp_path / "grid.png"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    images = sorted(folder.rglob("*.png"))
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert {r["label"] for r in rows} <= {"t-shirt_top", "trouser", "sneaker"}
    assert "30 images:" in proc.stdout and "trouser/" in proc.stdout  # short names that still tell files apart
    grid = Image.open(tmp_path / "grid.png")
    assert grid.width > 600 and len(np.unique(np.asarray(grid.convert("L")))) > 50  # drawn images, not a blank page


def test_glob_patterns_and_csv_format(finetuned_run: Path, trained_data: Path, tmp_path: Path) -> None:
    pattern = str(trained_data / "test" / "sneaker" / "*.png")
    proc = visiontune("predict", str(finetuned_run), pattern, "--format", "csv", "--out", str(tmp_path / "p.csv"))
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "p.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and {"label_5", "probability_5"} <= set(rows[0])


def test_bad_arguments_are_one_line_errors(finetuned_run: Path, tmp_path: Path) -> None:
    assert_one_line_error(visiontune("predict", "no_such_model_xyz", "x.png"), "no_such_model_xyz")
    assert_one_line_error(visiontune("predict", str(finetuned_run), str(tmp_path / "*.png")), "no images to predict")
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert_one_line_error(visiontune("predict", str(finetuned_run), str(image), "--format", "xml"), "--format")
    assert_one_line_error(
        visiontune("predict", str(finetuned_run), str(image), "--unknown-score", "entropy"), "'msp', 'energy'"
    )


def test_an_existing_predictions_file_is_kept_unless_overwrite(class_folder: Path, tmp_path: Path) -> None:
    from tests.test_bundle import tiny_bundle

    bundle = str(tiny_bundle(tmp_path / "model"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "predictions.csv").write_text("my results\n")
    (work / "mine.csv").write_text("mine\n")
    proc = visiontune("predict", bundle, str(class_folder), cwd=work)
    assert_one_line_error(proc, "predictions.csv already exists", "--overwrite", "--out")
    proc = visiontune("predict", bundle, str(class_folder), "--out", "mine.csv", "--format", "csv", cwd=work)
    assert_one_line_error(proc, "mine.csv already exists", "--overwrite")
    assert (work / "predictions.csv").read_text() == "my results\n" and (work / "mine.csv").read_text() == "mine\n"
    proc = visiontune("predict", bundle, str(class_folder), "--out", "new.csv", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (work / "new.csv").is_file() and (work / "predictions.csv").read_text() == "my results\n"
    proc = visiontune("predict", bundle, str(class_folder), "--overwrite", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (work / "predictions.csv").read_text().startswith("path,label")


def test_a_damaged_bundle_is_one_line_exit_5(class_folder: Path, tmp_path: Path) -> None:
    from tests.test_bundle import flip_bytes, tiny_bundle

    bundle = tiny_bundle(tmp_path / "model")
    flip_bytes(bundle)
    proc = visiontune("predict", str(bundle), str(class_folder), "--format", "json")
    assert_one_line_error(proc, "weights do not match bundle.json's checksum", "re-export or retrain")
    assert proc.returncode == 5 and proc.stdout == ""
