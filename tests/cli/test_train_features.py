"""`visiontune train DATA --method features`: the heads table, JSON lines, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import assert_one_line_error, visiontune
from tests.conftest import write_class_folders


def test_features_method_prints_the_heads(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "data", fashion, per_class=16)
    args = ("train", str(data), "--method", "features", "--image-size", "32", "--heads", "knn,logreg")
    proc = visiontune(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert "Heads (validation)" in proc.stdout and "(kept)" in proc.stdout and "macro F1" in proc.stdout
    assert (tmp_path / "run" / "model" / "bundle.json").is_file()
    proc = visiontune(*args, "--out", str(tmp_path / "json"), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["head"] for r in rows] == ["knn", "logreg"] and all("accuracy" in r for r in rows)


def test_features_options_are_checked(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "data", fashion, per_class=4)
    proc = visiontune("train", str(data), "--method", "features", "--heads", "logreg,xgboost")
    assert_one_line_error(proc, "`heads` must be one of", "xgboost")
    assert_one_line_error(visiontune("train", str(data), "--views", "3"), "--views only apply to --method features")
    for option, value in (("--epochs", "3"), ("--lr", "0.01"), ("--lr", "auto"), ("--batch-size", "8"),
                          ("--members", "2")):  # fmt: skip
        proc = visiontune("train", str(data), "--method", "features", option, value)
        assert_one_line_error(proc, f"{option} only apply to --method finetune or scratch, not --method features")
