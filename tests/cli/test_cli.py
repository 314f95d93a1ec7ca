"""The CLI as a user runs it: a real subprocess, exit codes, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_class_folders, write_labels_csv

REPO = Path(__file__).resolve().parents[2]


def visiontune(*args: str, cwd: Path | None = None, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "visiontune", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error:"), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr


def test_version_and_help() -> None:
    assert visiontune("--version").stdout.startswith("visiontune ")
    helptext = visiontune("--help").stdout
    for command in ("datasets", "inspect", "train", "models"):
        assert command in helptext


def test_export_then_inspect(tmp_path: Path) -> None:
    proc = visiontune("datasets", "export", "fashion-mnist", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4000 images" in proc.stdout
    proc = visiontune("inspect", str(tmp_path / "demo"), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    assert "4000 usable images" in proc.stdout
    report = json.loads((tmp_path / "report" / "inspect.json").read_text())
    assert report["ok"] and report["counts"]["test"]["sneaker"] == 100
    assert sorted(report["grids"]) == ["test", "train", "valid"]


def test_export_refusal_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    assert_one_line_error(visiontune("datasets", "export", "fashion-mnist", str(tmp_path / "mine")), "--overwrite")


def test_inspect_unusable_data_exits_3(tmp_path: Path, fashion: dict) -> None:
    write_class_folders(tmp_path / "d", fashion, classes=(4,), per_class=5)
    proc = visiontune("inspect", str(tmp_path / "d"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 3
    assert "NOT usable" in proc.stdout and "coat" in proc.stdout


def test_inspect_missing_folder_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(visiontune("inspect", str(tmp_path / "nope")), "no such folder")


def test_inspect_names_a_symlink_loop_and_counts_each_image_once(class_folder: Path, tmp_path: Path) -> None:
    (class_folder / "trouser" / "loop").symlink_to("..")
    proc = visiontune("inspect", str(class_folder), "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert "30 files, 30 usable images" in proc.stdout and "trouser/loop" in proc.stdout


def test_csv_file_under_two_labels_inspect_exits_3_and_train_refuses(class_folder: Path, tmp_path: Path) -> None:
    csv_file = write_labels_csv(class_folder, "trouser/trouser_002.png,sneaker")
    proc = visiontune("inspect", str(csv_file), "--out", str(tmp_path / "r"))
    assert proc.returncode == 3, proc.stderr
    assert "NOT usable" in proc.stdout and "trouser/trouser_002.png" in proc.stdout
    train = visiontune("train", str(csv_file), "--model", "small_cnn", "--out", str(tmp_path / "run"))
    assert_one_line_error(
        train, "labels.csv", "trouser/trouser_002.png", "'sneaker' (line 32)", "remove one of the rows"
    )
    assert train.returncode == 3


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--model", "efficientnet_lit0"], ["unknown model", "efficientnet_lite0"]),
        (["--image-size", "16"], ["below", "minimum"]),
        (["--augment", "wild"], ["`augment` must be one of", "Received: augment='wild'"]),
        (["--lr", "fast"], ["--lr takes a number or 'auto'"]),
    ],
)
def test_train_bad_options_are_one_line(tmp_path: Path, fashion: dict, args: list[str], fragments: list[str]) -> None:
    data = write_class_folders(tmp_path / "d", fashion, per_class=6)
    proc = visiontune("train", str(data), "--out", str(tmp_path / "run"), *args)
    assert_one_line_error(proc, *fragments)


def test_train_single_class_is_one_line(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "d", fashion, classes=(2,), per_class=6)
    assert_one_line_error(visiontune("train", str(data)), "found one class", "at least two")


def test_train_small_cnn_end_to_end_with_json_log(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "d", fashion, per_class=12)
    proc = visiontune(
        "train", str(data), "--model", "small_cnn", "--method", "scratch", "--image-size", "28", "--epochs", "1",
        "--freeze-epochs", "0", "--batch-size", "8", "--workers", "0", "--out", str(tmp_path / "run"), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["phase"] == "fit"
    assert (tmp_path / "run" / "model" / "bundle.json").is_file()
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "backbone: small_cnn" in config  # --model is the old spelling of --backbone
    proc = visiontune("train", str(data), "--resume", str(tmp_path / "run"), "--epochs", "3")
    assert_one_line_error(proc, "--resume", "--epochs, DATA would be ignored")
    assert (tmp_path / "run" / "config.yaml").read_text() == config  # nothing changed


FULL_DISK = """
import errno, os, sys
import visiontune.training.checkpoint as checkpoint

def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

checkpoint.save_file = full_disk
from visiontune.cli.main import run
sys.argv = ["visiontune", *sys.argv[1:]]
run()
"""


def test_full_disk_while_checkpointing_is_one_line(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "d", fashion, per_class=6)
    (tmp_path / "full_disk.py").write_text(FULL_DISK)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "full_disk.py"), "train", str(data), "--model", "small_cnn", "--method",
         "scratch", "--image-size", "28", "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert_one_line_error(proc, "disk full while writing a checkpoint", "resume")
