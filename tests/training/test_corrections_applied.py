"""`train --corrections FILE`: the run trains on the corrected labels and records which corrections it applied."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import write_class_folders
from visiontune.cli.main import app
from visiontune.config import DataConfig
from visiontune.data import corrections as corr
from visiontune.data.dataset import load_data


def test_train_applies_a_corrections_file_and_records_it(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "data", fashion, per_class=12)
    fixes = tmp_path / "reviewed.csv"
    corr.append_corrections(
        fixes,
        [
            corr.Correction("trouser/trouser_000.png", "relabel", "sneaker", "trouser"),
            corr.Correction("sneaker/sneaker_001.png", "exclude", given="sneaker"),
            corr.Correction("sneaker/sneaker_002.png", "keep", given="sneaker"),
        ],
    )
    out = tmp_path / "run"
    args = ["train", str(data), "--method", "scratch", "--backbone", "small_cnn", "--image-size", "28", "--epochs",
            "1", "--freeze-epochs", "0", "--workers", "0", "--corrections", str(fixes), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(out / "splits.csv") as handle:
        labels = {Path(row["path"]).name: row["label"] for row in csv.DictReader(handle)}
    assert labels["trouser_000.png"] == "sneaker" and "sneaker_001.png" not in labels
    assert len(labels) == 35
    info = json.loads((out / "run.json").read_text())
    recorded = info["corrections"]
    assert (recorded["file"], recorded["relabelled"], recorded["excluded"], recorded["kept"]) == (str(fixes), 1, 1, 1)
    assert [row["path"] for row in recorded["applied"]] == ["trouser/trouser_000.png", "sneaker/sneaker_001.png"]
    plain = load_data(str(data), DataConfig(source=str(data), corrections="none"))
    assert info["data_manifest_sha256"] != plain.manifest_hash()  # the manifest hash moves with the labels
