"""Every command that takes an output path, pointed at a folder of someone's unrelated files: none is lost.

With and without --overwrite where the command has it. Each command either writes its own files beside
the unrelated ones or refuses in one line; no unrelated file changes by a byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.cli.test_cli import assert_one_line_error, visiontune
from tests.conftest import write_class_folders

UNRELATED = {
    "notes.txt": b"my notes\n",
    "config.yaml": b"project: mine\n",  # a name a run also writes
    "photo.png": bytes(range(256)),
    "sub/keep.bin": b"\x00\x01" * 100,
}


def unrelated_folder(path: Path) -> Path:
    for name, data in UNRELATED.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def assert_kept(path: Path) -> None:
    for name, data in UNRELATED.items():
        assert (path / name).read_bytes() == data, name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, fashion: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """(data, run): 3 classes x 12 real images, and a small_cnn trained on them for one epoch at 28 px."""
    from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
    from visiontune.training.pipeline import train

    root = tmp_path_factory.mktemp("out-safety")
    data = write_class_folders(root / "data", fashion, per_class=12)
    config = RunConfig(
        DataConfig(source=str(data), valid_pct=0.25),
        ModelConfig(backbone="small_cnn", image_size=28, pretrained=False),
        TrainConfig(method="scratch", num_workers=0),
        FinetuneConfig(epochs=1, freeze_epochs=0, batch_size=8),
        out=str(root / "run"),
    )
    return data, train(config).run_dir


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_train_refuses_a_folder_of_unrelated_files(tiny: tuple[Path, Path], tmp_path: Path, overwrite: list) -> None:
    out = unrelated_folder(tmp_path / "mine")
    proc = visiontune("train", str(tiny[0]), "--model", "small_cnn", "--out", str(out), *overwrite)
    assert_one_line_error(proc, "holds files visiontune did not write", "nothing was deleted")
    assert_kept(out)
    assert not (out / ".lock").exists()


def test_inspect_and_evaluate_write_beside_unrelated_files(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = tiny
    out = unrelated_folder(tmp_path / "mine")
    proc = visiontune("inspect", str(data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "inspect.json").is_file()
    proc = visiontune("evaluate", str(run), str(data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "metrics.json").is_file()
    assert_kept(out)


def test_export_and_predict_refuse_a_folder_as_their_file(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = tiny
    out = unrelated_folder(tmp_path / "mine")
    assert_one_line_error(visiontune("export", str(run), "--out", str(out)), "is a folder")
    for option, extra in (("--out", ["--overwrite"]), ("--grid", [])):
        proc = visiontune("predict", str(run), str(data), option, str(out), *extra)
        assert_one_line_error(proc, f"{out} is a folder", f"give {option} a file name")
    proc = visiontune("predict", str(run), str(data), "--out", str(out / "notes.txt"))
    assert_one_line_error(proc, "notes.txt already exists", "--overwrite")
    assert_kept(out)


def test_export_writes_beside_unrelated_files(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    out = unrelated_folder(tmp_path / "mine")
    proc = visiontune("export", str(tiny[1]), "--out", str(out / "model.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.onnx").is_file()
    assert_kept(out)


@pytest.mark.slow
def test_tune_writes_beside_unrelated_files(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    out = unrelated_folder(tmp_path / "mine")
    base = {
        "model": {"backbone": "small_cnn", "image_size": 28, "pretrained": False},
        "train": {"method": "scratch", "num_workers": 0},
        "finetune": {"freeze_epochs": 0, "batch_size": 8},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    proc = visiontune("tune", str(tiny[0]), "--config", str(tmp_path / "base.yaml"), "--grid", "lr=0.003",
                      "--epochs", "1", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "trials.csv").is_file()
    assert_kept(out)


def test_datasets_export_keeps_unrelated_files(tmp_path: Path) -> None:
    out = unrelated_folder(tmp_path / "mine")
    for extra in ([], ["--overwrite"]):
        assert_one_line_error(visiontune("datasets", "export", "fashion-mnist", str(out), *extra), str(out))
    assert_kept(out)
    # a previous export with someone's notes put beside it: --overwrite must not take the notes with it
    export = tmp_path / "demo"
    assert visiontune("datasets", "export", "fashion-mnist", str(export)).returncode == 0
    (export / "notes.txt").write_bytes(UNRELATED["notes.txt"])
    proc = visiontune("datasets", "export", "fashion-mnist", str(export), "--overwrite")
    assert_one_line_error(proc, "notes.txt")
    assert (export / "notes.txt").read_bytes() == UNRELATED["notes.txt"] and (export / "train").is_dir()
