"""`visiontune evaluate` as a user runs it: where the outputs go, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli.test_cli import assert_one_line_error, visiontune
from tests.conftest import write_class_folders


def test_run_folder_gets_an_eval_folder(finetuned_run: Path, trained_data: Path, tmp_path: Path) -> None:
    run = shutil.copytree(finetuned_run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    proc = visiontune("evaluate", str(run), str(trained_data), "--top-losses", "3")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert f"accuracy {metrics['accuracy']:.4f}" in proc.stdout and "report.html" in proc.stdout
    assert metrics["split"] == "test" and metrics["images"] == 30
    assert (run / "eval" / "report.html").is_file() and (run / "eval" / "misclassified.csv").is_file()


def test_bundle_folder_writes_eval_in_the_working_folder(
    features_run: Path, trained_data: Path, tmp_path: Path
) -> None:
    # the bundle inside its run: the run's splits still apply, and DATA may be a sub-folder of its data
    proc = visiontune(
        "evaluate", str(features_run / "model"), str(trained_data / "test"), "--top-losses", "0", "--quiet",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["own_data"] is True and metrics["split"] == "test" and metrics["images"] == 30
    assert not (features_run / "eval").exists()


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing data", ["nope: no such folder"]),
        ("not a bundle", ["not a model bundle", "run folder"]),
        ("class mismatch", ["classes don't match", "no images of sneaker", "doesn't know: pullover"]),
        ("train split", ["--split train would score images the model was trained on", "valid or test"]),
        ("missing ood", ["gone: no such folder", "--ood takes a folder"]),
    ],
)
def test_bad_input_is_one_line(
    case: str, fragments: list[str], finetuned_run: Path, trained_data: Path, fashion: dict, tmp_path: Path
) -> None:
    model, data, extra = str(finetuned_run), str(trained_data), ["--out", str(tmp_path / "eval")]
    if case == "missing data":
        data = str(tmp_path / "nope")
    elif case == "not a bundle":
        (tmp_path / "empty").mkdir()
        model = str(tmp_path / "empty")
    elif case == "class mismatch":
        data = str(write_class_folders(tmp_path / "other", fashion, classes=(0, 1, 2), per_class=2, split="test"))
    elif case == "train split":
        extra += ["--split", "train"]
    else:
        extra += ["--ood", str(tmp_path / "gone")]
    assert_one_line_error(visiontune("evaluate", model, data, *extra), *fragments)
    assert not (tmp_path / "eval" / "metrics.json").exists()
