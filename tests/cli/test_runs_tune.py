"""`visiontune runs`, `runs compare` and `tune` as a user runs them: real runs, real charts, one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli.test_cli import assert_one_line_error, visiontune
from tests.conftest import write_class_folders

LINE_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44))  # matplotlib's C0, C1, C2: one per run compared


def copy_run(run: Path, to: Path) -> Path:
    return Path(shutil.copytree(run, to, ignore=shutil.ignore_patterns("checkpoints")))


def has_colour(image: np.ndarray, rgb: tuple[int, int, int], *, pixels: int = 30) -> bool:
    return int(np.all(np.abs(image[..., :3].astype(int) - rgb) <= 8, axis=-1).sum()) >= pixels


@pytest.mark.slow  # 25.5 s measured; the table and compare are checked in-process by tests/runs/
def test_runs_lists_train_features_and_tune_runs_and_compare_draws_their_curves(
    finetuned_run: Path, features_run: Path, trained_data: Path, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    copy_run(finetuned_run, root / "finetuned")
    copy_run(features_run, root / "features")
    proc = visiontune(
        "tune", str(trained_data), "--grid", "image_size=32,48", "--epochs", "1", "--valid-pct", "0.25",
        "--out", str(root / "tune"), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "best: trial" in proc.stdout and "best_config.yaml" in proc.stdout
    with open(root / "tune" / "trials.csv", newline="") as handle:
        trials = list(csv.DictReader(handle))
    assert sorted(int(t["image_size"]) for t in trials) == [32, 48] and {t["state"] for t in trials} == {"complete"}
    grid = np.asarray(Image.open(root / "tune" / "grid.png"))  # accuracy and time per epoch: two lines
    assert grid.shape[1] > 400 and has_colour(grid, LINE_COLOURS[0]) and has_colour(grid, LINE_COLOURS[1])

    proc = visiontune("runs", str(root), "--json", "--sort", "valid")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(r["name"] for r in rows) == ["features", "finetuned", "tune/trial-0000", "tune/trial-0001"]
    assert {r["method"] for r in rows} == {"finetune", "features"}
    assert all(r["status"] == "done" and r["valid"] is not None for r in rows)
    # best first by each run's own monitor: the finetuned fixture monitors valid_loss (lower is better)
    best_first = sorted(rows, key=lambda r: r["valid"] if r["monitor"] == "valid_loss" else -r["valid"])
    assert [r["name"] for r in rows] == [r["name"] for r in best_first]
    assert {r["monitor"] for r in rows} == {"valid_accuracy", "valid_loss"}  # both directions are in the order
    by_name = {r["name"]: r for r in rows}
    assert by_name["features"]["epochs"] == "-" and by_name["finetuned"]["epochs"] == "1+1"
    assert by_name["tune/trial-0000"]["trial"] == 0 and by_name["finetuned"]["test"] is not None

    table = visiontune("runs", str(root)).stdout  # the rich table
    for text in ("finetuned", "features", "tune/trial-0001", "efficientnet_lite0"):
        assert text in table
    narrow = visiontune("runs", str(root), columns=80).stdout  # an 80-column terminal: fewer columns, none cut
    assert "…" not in narrow and "left out to fit the terminal: date" in narrow
    for row in rows:
        assert f"{row['valid']:.4f}" in narrow and row["name"] in narrow

    chart = tmp_path / "compare.png"
    proc = visiontune(
        "runs", "compare", str(root / "finetuned"), str(root / "features"), str(root / "tune" / "trial-0000"),
        "--out", str(chart),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "train.method" in proc.stdout and "model.image_size" in proc.stdout  # what differs between them
    image = np.asarray(Image.open(chart))
    assert image.shape[1] > 800 and all(has_colour(image, c) for c in LINE_COLOURS)  # every run drew its line


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["runs", "{tmp}/nope"], ["no such folder"]),
        (["runs", "{tmp}", "--sort", "speed"], ["`sort` must be one of", "'speed'"]),
        (["runs", "compare", "{tmp}/data"], ["two or more run folders"]),
        (["runs", "compare", "{tmp}/data", "{tmp}"], ["not a run folder"]),
        (["tune", "{tmp}/data", "--grid", "size=32,64"], ["`--grid key` must be one of", "image_size"]),
        (["tune", "{tmp}/data", "--grid", "image_size=big,small"], ["--grid image_size takes whole numbers"]),
        (["tune", "{tmp}/data", "--grid", "image_size=32,64", "--trials", "5"], ["more than the grid's 2"]),
        (["tune", "{tmp}/data", "--space", "{tmp}/space.yaml"], ["`lr` as a range is"]),
        (["tune", "{tmp}/data", "--storage", "nosuchdb://x/y", "--out", "{tmp}/o"], ["--storage", "sqlite:///"]),
        (["tune", "--trials", "2"], ["tune needs DATA"]),
    ],
)
def test_bad_runs_and_tune_input_is_one_line(tmp_path: Path, fashion: dict, args: list[str], fragments: list[str]):
    write_class_folders(tmp_path / "data", fashion, per_class=4)
    (tmp_path / "space.yaml").write_text("lr: {low: 0.001}\n")
    proc = visiontune(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "o" / "study.db").exists()


def test_unreachable_postgresql_is_one_line(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "data", fashion, per_class=4)
    proc = visiontune("tune", str(data), "--storage", "postgresql://me:secret@127.0.0.1:1/db", "--out", str(tmp_path))
    assert_one_line_error(proc, "--storage", "127.0.0.1:1")
    assert "secret" not in proc.stderr  # the password is never printed
