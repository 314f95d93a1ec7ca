"""corrections.csv: written atomically, newest decision wins, applied by load_data (labels, exclusions, manifest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from visiontune.config import DataConfig
from visiontune.data import corrections as corr
from visiontune.data.dataset import load_data
from visiontune.errors import DatasetError


def _load(root: Path, **kwargs: object):
    return load_data(str(root), DataConfig(source=str(root), **kwargs), check=False)


def test_rows_append_and_the_newest_decision_wins(tmp_path: Path) -> None:
    path = tmp_path / "corrections.csv"
    corr.append_corrections(path, [corr.Correction("a/1.png", "relabel", "b", "a", score=0.9)])
    corr.append_corrections(path, [corr.Correction("a/2.png", "exclude"), corr.Correction("a/1.png", "keep")])
    rows = corr.read_corrections(path)
    assert [(r.path, r.action) for r in rows] == [("a/1.png", "relabel"), ("a/2.png", "exclude"), ("a/1.png", "keep")]
    assert rows[0].score == pytest.approx(0.9) and rows[0].when  # a time is stamped
    assert path.read_text().splitlines()[0] == ",".join(corr.COLUMNS)
    assert {p: c.action for p, c in corr.latest(rows).items()} == {"a/1.png": "keep", "a/2.png": "exclude"}
    assert [p.name for p in tmp_path.iterdir()] == ["corrections.csv"]  # no temporary left behind


def test_load_data_applies_the_file_beside_the_data(class_folder: Path) -> None:
    before = _load(class_folder)
    corr.append_corrections(
        class_folder / "corrections.csv",
        [
            corr.Correction("trouser/trouser_000.png", "relabel", "sneaker", "trouser"),
            corr.Correction("sneaker/sneaker_001.png", "exclude", given="sneaker"),
            corr.Correction("sneaker/sneaker_002.png", "no_class", given="sneaker"),
            corr.Correction("t-shirt_top/t-shirt_top_003.png", "keep", given="t-shirt_top"),
            corr.Correction("gone/missing.png", "exclude"),
        ],
    )
    after = _load(class_folder)
    labels = {s.path.name: s.label for s in after.samples}
    assert labels["trouser_000.png"] == "sneaker"
    assert "sneaker_001.png" not in labels and "sneaker_002.png" not in labels
    assert len(after.samples) == len(before.samples) - 2
    assert after.manifest_hash() != before.manifest_hash()
    applied = after.corrections
    assert applied is not None and (len(applied.relabelled), len(applied.excluded), applied.kept) == (1, 2, 1)
    assert applied.missing == 1
    assert (
        applied.describe().startswith("applied 3 corrections from") and "1 relabelled, 2 excluded" in applied.describe()
    )
    assert not any(Path(p).name == "corrections.csv" for p, _ in after.skipped)  # not reported as a stray file
    assert _load(class_folder, corrections="none").manifest_hash() == before.manifest_hash()


def test_bad_rows_are_refused_naming_the_line(class_folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "fix.csv"
    bad.write_text("path,action,label\ntrouser/trouser_000.png,rename,x\n")
    with pytest.raises(DatasetError, match=r"fix.csv line 2: unknown action 'rename'"):
        _load(class_folder, corrections=str(bad))
    bad.write_text("path,action,label\ntrouser/trouser_000.png,relabel,trousers\n")
    with pytest.raises(DatasetError, match="relabel to 'trousers', which is not a class"):
        _load(class_folder, corrections=str(bad))
    with pytest.raises(DatasetError, match="no such corrections file"):
        _load(class_folder, corrections=str(tmp_path / "nope.csv"))
