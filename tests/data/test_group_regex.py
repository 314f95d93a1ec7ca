"""`--group-regex` through data loading (README, Data): files sharing a group (one pet, one patient) land on one
side of the validation split, on real Fashion-MNIST images in class folders."""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from tests.conftest import write_class_folders
from visiontune.cli.main import app
from visiontune.config import DataConfig
from visiontune.data.dataset import load_data

GROUP = r"^(item\d+)_"


def _grouped(root: Path, fashion: dict[str, np.ndarray]) -> Path:
    """root/<class>/item<k>_<view>.png: 3 classes x 8 groups of 3 real images (a group: one item photographed 3x)."""
    write_class_folders(root, fashion, per_class=24)
    for folder in root.iterdir():
        for k, path in enumerate(sorted(folder.glob("*.png"))):
            shutil.move(path, folder / f"item{k // 3}_{k % 3}.png")
    return root


def _sides(source: Path, group_regex: str | None, seed: int) -> dict[tuple[str, str], set[str]]:
    data = load_data(source, DataConfig(source=str(source), valid_pct=0.25, group_regex=group_regex, seed=seed))
    sides: dict[tuple[str, str], set[str]] = defaultdict(set)
    for sample in data.samples:
        sides[(sample.label, sample.path.name.split("_")[0])].add(str(sample.split))
    return sides


def test_files_of_one_group_stay_on_one_side_of_the_split(tmp_path: Path, fashion: dict[str, np.ndarray]) -> None:
    root = _grouped(tmp_path / "data", fashion)
    for seed in (0, 1, 2):
        sides = _sides(root, GROUP, seed)
        assert len(sides) == 3 * 8 and all(len(s) == 1 for s in sides.values()), seed
        assert {next(iter(s)) for s in sides.values()} == {"train", "valid"}
    assert any(len(s) > 1 for seed in (0, 1, 2) for s in _sides(root, None, seed).values())  # ungrouped: torn


def test_train_group_regex_keeps_groups_apart_in_splits_csv(tmp_path: Path, fashion: dict[str, np.ndarray]) -> None:
    root = _grouped(tmp_path / "data", fashion)
    args = ["train", str(root), "--group-regex", GROUP, "--valid-pct", "0.25", "--method", "scratch", "--backbone"]
    args += ["mlp", "--image-size", "28", "--epochs", "1", "--freeze-epochs", "0", "--workers", "0"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    sides: dict[str, set[str]] = defaultdict(set)
    with open(tmp_path / "run" / "splits.csv") as handle:
        for row in csv.DictReader(handle):
            sides[row["label"] + "/" + Path(row["path"]).name.split("_")[0]].add(row["split"])
    assert len(sides) == 24 and all(len(s) == 1 for s in sides.values())
    for label in ("sneaker", "t-shirt_top", "trouser"):  # and each class has groups on both sides
        assert {next(iter(s)) for key, s in sides.items() if key.startswith(label + "/")} == {"train", "valid"}
