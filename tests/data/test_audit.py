"""The data set audit: every planted problem is found and named by path, and a clean data set stays quiet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_class_folders, write_labels_csv
from tests.data import image_factories as factories
from visiontune.config import DataConfig
from visiontune.data.audit import AuditReport, inspect_data
from visiontune.errors import DatasetError


def _plant(root: Path) -> dict[str, str]:
    """Plant one of each problem in the split_folder fixture's data; returns name -> path relative to root."""
    planted = {
        "truncated": factories.write_truncated_jpeg(root / "train/trouser/truncated.jpg"),
        "text_as_jpg": factories.write_text_file(root / "train/sneaker/fake.jpg"),
        "cmyk": factories.write_cmyk_jpeg(root / "train/t-shirt_top/cmyk.jpg"),
        "png16": factories.write_png16(root / "train/trouser/deep.png"),
        "rgba": factories.write_rgba_png(root / "val/sneaker/alpha.png"),
        "exif": factories.write_exif_rotated_jpeg(root / "test/t-shirt_top/rotated.jpg"),
        "leaked": Path(shutil.copy(root / "train/sneaker/sneaker_000.png", root / "test/sneaker/leaked.png")),
        "relabelled": Path(shutil.copy(root / "train/trouser/trouser_001.png", root / "train/sneaker/relabelled.png")),
        "notes": root / "train/trouser/notes.txt",
        "empty": root / "train/bag",
    }
    planted["notes"].write_text("scanned from the catalogue\n")
    planted["empty"].mkdir()
    return {name: path.relative_to(root).as_posix() for name, path in planted.items()}


def _groups_with(report: AuditReport, path: str) -> list[dict]:
    return [g for g in report.duplicates if path in {f["path"] for f in g["files"]}]


def test_acceptance_every_planted_problem_is_named(split_folder: Path, tmp_path: Path) -> None:
    planted = _plant(split_folder)
    report = inspect_data(split_folder, out_dir=tmp_path / "out")

    assert report.ok, report.problems
    unreadable = {u["path"] for u in report.unreadable}
    assert unreadable == {planted["truncated"], planted["text_as_jpg"]}
    assert {u["path"]: u["reason"] for u in report.unsupported} == {
        planted["notes"]: "unsupported file extension '.txt'"
    }
    assert report.empty_classes == [planted["empty"]]

    (leak,) = _groups_with(report, planted["leaked"])
    assert (leak["kind"], leak["scope"], leak["splits"]) == ("exact", "cross_split", ["test", "train"])
    assert {f["path"] for f in leak["files"]} == {"train/sneaker/sneaker_000.png", planted["leaked"]}
    (relabelled,) = _groups_with(report, planted["relabelled"])
    assert (relabelled["kind"], relabelled["scope"], relabelled["labels"]) == (
        "exact",
        "conflicting_labels",
        ["sneaker", "trouser"],
    )

    assert {"CMYK", "I;16", "RGBA"} <= set(report.modes)
    usable = {
        f"{s}/{label}/{name}"
        for s in ("train", "val", "test")
        for label in report.classes
        for name in _names(split_folder / s / label)
    }
    assert {planted[k] for k in ("cmyk", "png16", "rgba", "exif")} <= usable
    assert report.sizes["aspect_ratio"]["min"] == pytest.approx(40 / 60, abs=1e-3)  # the EXIF-rotated file, upright
    assert report.sizes["aspect_ratio"]["max"] == pytest.approx(3.0)  # the 30x10 16-bit PNG
    text = " | ".join(report.warnings)
    for phrase in ("more than one split", "more than one class", "2 unreadable files", "1 file skipped", "train/bag"):
        assert phrase in text


def _names(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()] if folder.is_dir() else []


def test_usable_samples_exclude_unreadable_files(split_folder: Path) -> None:
    planted = _plant(split_folder)
    report = inspect_data(split_folder)
    # 8 + 3 + 4 per class in 3 classes, plus 6 planted files that decode (cmyk, png16, rgba, exif, two copies)
    assert report.num_images == 3 * (8 + 3 + 4) + 6
    assert report.num_files == report.num_images + 2
    assert planted["truncated"] not in {f["path"] for g in report.duplicates for f in g["files"]}


def test_near_duplicate_across_splits(split_folder: Path) -> None:
    original = split_folder / "train/trouser/trouser_002.png"
    copy = split_folder / "test/trouser/resaved.jpg"
    Image.open(original).save(copy, quality=70)
    report = inspect_data(split_folder)
    (group,) = _groups_with(report, "test/trouser/resaved.jpg")
    assert (group["kind"], group["scope"]) == ("near", "cross_split")
    assert {f["path"] for f in group["files"]} == {"train/trouser/trouser_002.png", "test/trouser/resaved.jpg"}


def test_copy_in_another_class_and_split_has_both_scopes(split_folder: Path) -> None:
    shutil.copy(split_folder / "train/trouser/trouser_003.png", split_folder / "test/sneaker/copy.png")
    report = inspect_data(split_folder)
    (group,) = report.duplicates
    assert group["scope"] == "conflicting_labels"  # the most serious scope comes first
    assert group["scopes"] == ["conflicting_labels", "cross_split"]
    assert (group["labels"], group["splits"]) == (["sneaker", "trouser"], ["test", "train"])
    assert len(report.warnings) == 2  # counted as leakage and as conflicting labels


def test_clean_data_has_no_findings(split_folder: Path) -> None:
    report = inspect_data(split_folder)
    assert report.ok
    assert report.duplicates == []
    assert report.unreadable == report.unsupported == report.empty_classes == []
    assert report.warnings == []


def test_counts_split_and_sizes(class_folder: Path) -> None:
    report = inspect_data(class_folder, DataConfig(valid_pct=0.2))
    assert report.classes == ["sneaker", "t-shirt_top", "trouser"]
    assert report.counts == {"train": dict.fromkeys(report.classes, 8), "valid": dict.fromkeys(report.classes, 2)}
    assert report.imbalance_ratio == 1.0
    assert report.total_bytes == sum(p.stat().st_size for p in class_folder.rglob("*.png"))
    assert report.sizes["width"] == {"min": 28.0, "median": 28.0, "max": 28.0}
    assert report.modes == {"L": 30} and report.formats == {"PNG": 30}
    assert report.suggested_image_size == 96 and "28" in report.suggested_image_size_reason
    assert report.images_per_s > 0 and report.elapsed_s > 0
    assert report.source_kind == "folder"


def test_sample_fraction_is_ignored(class_folder: Path) -> None:
    assert inspect_data(class_folder, DataConfig(sample=0.3)).num_images == 30


def test_imbalance_ratio(tmp_path: Path, fashion: dict[str, np.ndarray]) -> None:
    root = write_class_folders(tmp_path / "data", fashion, classes=(0,), per_class=12)
    write_class_folders(root, fashion, classes=(1,), per_class=3)
    report = inspect_data(root, DataConfig(valid_pct=0.34))
    assert report.class_totals == {"t-shirt_top": 12, "trouser": 3}
    assert report.imbalance_ratio == 4.0
    assert "imbalance 4.0x" in " ".join(report.warnings)


def test_json_and_grids_written(split_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = inspect_data(split_folder, out_dir=out, grid_per_class=3)
    saved = json.loads((out / "inspect.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["ok"] is True and saved["counts"]["valid"]["sneaker"] == 3
    assert set(report.grids) == {"train", "valid", "test"}
    for split, path in report.grids.items():
        assert Path(path) == out / f"samples_{split}.png"
        with Image.open(path) as grid:
            assert grid.format == "PNG"
            assert grid.width >= 3 * 96 and grid.height >= 3 * 96  # 3 images per row, a row per class
            assert len(np.unique(np.asarray(grid.convert("L")))) > 10  # real pictures, not a blank sheet


def test_single_class_is_a_problem(tmp_path: Path, fashion: dict[str, np.ndarray]) -> None:
    root = write_class_folders(tmp_path / "data", fashion, classes=(7,), per_class=5)
    report = inspect_data(root)
    assert not report.ok
    assert "sneaker" in report.problems[0]
    assert report.to_dict()["ok"] is False


def test_class_missing_from_a_split_is_a_problem(split_folder: Path) -> None:
    shutil.rmtree(split_folder / "test/sneaker")
    report = inspect_data(split_folder)
    assert not report.ok
    assert "'sneaker'" in report.problems[0] and "test" in report.problems[0]


def test_no_usable_image_is_a_problem(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        factories.write_text_file(tmp_path / label / "x.jpg")
    report = inspect_data(tmp_path)
    assert not report.ok and "none of the 2 image files" in report.problems[0]
    assert report.sizes == {} and report.suggested_image_size == 224


def test_folder_without_images_raises(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    with pytest.raises(DatasetError, match="no labelled images"):
        inspect_data(tmp_path)


def test_symlink_loop_is_a_warning_with_its_path(class_folder: Path, tmp_path: Path) -> None:
    (class_folder / "trouser" / "loop").symlink_to("..")
    report = inspect_data(class_folder, out_dir=tmp_path / "out")
    assert report.ok and report.class_totals == {"sneaker": 10, "t-shirt_top": 10, "trouser": 10}
    assert report.duplicates == []
    assert [(f["path"], f["target"], f["kind"]) for f in report.links] == [("trouser/loop", ".", "loop")]
    assert any("loops, not followed" in w and "trouser/loop" in w for w in report.warnings)
    assert json.loads((tmp_path / "out" / "inspect.json").read_text())["links"] == report.links


def test_link_to_another_class_file_is_a_conflicting_label(class_folder: Path) -> None:
    (class_folder / "sneaker" / "alias.png").symlink_to("../trouser/trouser_004.png")
    report = inspect_data(class_folder)
    (group,) = _groups_with(report, "sneaker/alias.png")
    assert (group["kind"], group["scope"], group["labels"]) == ("exact", "conflicting_labels", ["sneaker", "trouser"])
    assert {f["path"] for f in group["files"]} == {"sneaker/alias.png", "trouser/trouser_004.png"}
    assert "more than one class" in " ".join(report.warnings)


def test_csv_file_under_two_labels_makes_the_data_unusable(class_folder: Path) -> None:
    report = inspect_data(write_labels_csv(class_folder, "trouser/trouser_002.png,sneaker"))
    assert not report.ok  # load_data refuses it, so inspect must not call it usable
    assert report.label_conflicts == [
        {"path": "trouser/trouser_002.png", "labels": ["sneaker", "trouser"], "lines": [24, 32]}
    ]
    assert "trouser/trouser_002.png" in report.problems[0] and "remove one of the rows" in report.problems[0]
    assert report.num_images == 29  # left out, not counted under either label


def test_csv_repeated_row_is_a_warning(class_folder: Path) -> None:
    report = inspect_data(write_labels_csv(class_folder, "trouser/trouser_002.png,trouser"))
    assert report.ok and report.num_images == 30
    assert report.repeated_rows == [
        {"path": "trouser/trouser_002.png", "reason": "labels.csv:32 repeats line 24; used once"}
    ]
    assert any("CSV rows repeating a file" in w for w in report.warnings)
