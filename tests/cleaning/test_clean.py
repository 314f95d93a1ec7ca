"""`clean`: the images filed under the wrong class come first, with their true class suggested; the outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from tests.cleaning.conftest import MOVED
from visiontune.cleaning import CleanResult, apply_suggestions
from visiontune.cli.main import app
from visiontune.config import DataConfig
from visiontune.data import corrections as corr
from visiontune.data.dataset import load_data


def test_wrong_labels_rank_first_with_their_true_class(cleaned: CleanResult) -> None:
    score = 1.0 - cleaned.probs[np.arange(len(cleaned.labels)), cleaned.labels]
    least_likely = {cleaned.data.samples[k].path.name for k in np.argsort(-score)[: len(MOVED)]}
    assert least_likely == set(MOVED)  # the four moved images, and nothing else, lead the ranking
    errors = {i.path.name: (i.given, i.suggested) for i in cleaned.issues if i.kind == "label_error"}
    assert set(errors) <= set(MOVED) and len(errors) >= 3  # the estimated-noise cut-off: no false alarm
    for name, (given, suggested) in errors.items():
        assert given == MOVED[name] and suggested == name.rsplit("_", 1)[0]
    assert np.allclose(cleaned.probs.sum(axis=1), 1.0, atol=1e-4) and cleaned.folds == 3
    rows = {r["class"]: r for r in cleaned.health.classes}
    assert sum(r["images"] for r in rows.values()) == 45
    assert all(0.0 <= r["noise_rate"] <= 1.0 for r in rows.values())
    assert sum(r["suspected_errors"] for r in rows.values()) == len(errors)


def test_outputs_issues_csv_and_grids(cleaned: CleanResult) -> None:
    with open(cleaned.files["issues"]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(cleaned.issues)
    first = rows[0]
    assert Path(first["path"]).name in MOVED and first["kind"] == "label_error"
    assert first["path"] == f"{MOVED[Path(first['path']).name]}/{Path(first['path']).name}"  # relative to the data
    assert float(first["score"]) >= float(rows[1]["score"]) and first["top1"] == first["suggested"]
    for name in ("suspects", "top_suspects"):
        with Image.open(cleaned.files[name]) as grid:
            assert grid.width >= 320 and np.asarray(grid.convert("L")).std() > 10  # drawn thumbnails


def test_apply_suggestions_writes_automatic_rows_once(cleaned: CleanResult, tmp_path: Path) -> None:
    target = tmp_path / "corrections.csv"
    written = apply_suggestions(cleaned, min_score=0.5, corrections=str(target))
    assert {Path(c.path).name for c in written} == {i.path.name for i in cleaned.issues if i.kind == "label_error"}
    assert all(c.action == "relabel" and c.by == "auto (min score 0.5)" and c.score >= 0.5 for c in written)
    assert apply_suggestions(cleaned, min_score=0.5, corrections=str(target)) == []  # decided ones stay as they are
    data = load_data(cleaned.data.root, DataConfig(source=str(cleaned.data.root), corrections=str(target)), check=False)
    labels = {s.path.name: s.label for s in data.samples}
    assert all(labels[Path(c.path).name] == Path(c.path).name.rsplit("_", 1)[0] for c in written)
    assert len(corr.read_corrections(target)) == len(written)


def test_cli_prints_the_class_table(cleaned: CleanResult, tmp_path: Path) -> None:
    out = tmp_path / "out"
    root = str(cleaned.data.root)
    result = CliRunner().invoke(app, ["clean", root, "--image-size", "64", "--folds", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "suspected errors" in result.output and "estimated noise rate" in result.output
    assert "45 images:" in result.output and (out / "issues.csv").is_file()
    assert not (cleaned.data.root / "corrections.csv").exists()  # nothing written beside the data unless asked
