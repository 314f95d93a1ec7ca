from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_class_folders, write_labels_csv
from visiontune.data.sources import from_csv, from_folder, from_name_func, from_name_re, scan_source, sort_labels
from visiontune.errors import DatasetError


def test_class_folders(class_folder: Path) -> None:
    (class_folder / "README.txt").write_text("not an image")
    (class_folder / "trouser" / "notes.md").write_text("x")
    (class_folder / ".hidden").mkdir()
    scan = from_folder(class_folder)
    assert scan.kind == "folder"
    assert scan.classes == ["sneaker", "t-shirt_top", "trouser"]
    assert len(scan.samples) == 30
    assert all(s.split is None for s in scan.samples)
    assert all(s.path.parent.name == s.label for s in scan.samples)
    skipped = {p.name: reason for p, reason in scan.skipped}
    assert "README.txt" in skipped and "notes.md" in skipped


def test_split_folders_detected_with_aliases(split_folder: Path) -> None:
    scan = from_folder(split_folder)
    assert scan.kind == "split_folders"
    splits = {s.split for s in scan.samples}
    assert splits == {"train", "valid", "test"}  # "val/" is the valid split
    assert sum(s.split == "valid" for s in scan.samples) == 9
    assert scan.classes == ["sneaker", "t-shirt_top", "trouser"]


def test_split_folders_need_train(tmp_path: Path, fashion: dict) -> None:
    write_class_folders(tmp_path / "d" / "test", fashion, per_class=2, split="test")
    with pytest.raises(DatasetError, match="no train/ folder"):
        from_folder(tmp_path / "d")


def test_empty_class_folder_reported(class_folder: Path) -> None:
    (class_folder / "bag").mkdir()
    scan = from_folder(class_folder)
    assert scan.empty_classes == ["bag"]
    assert "bag" not in scan.classes


def test_csv_source_with_relative_paths_split_and_missing_file(class_folder: Path) -> None:
    rows = ["path,label,split"]
    for i, path in enumerate(sorted(class_folder.rglob("*.png"))):
        rows.append(
            f"{path.relative_to(class_folder).as_posix()},{path.parent.name},{'val' if i % 5 == 0 else 'train'}"
        )
    rows.append("trouser/missing.png,trouser,train")
    (class_folder / "labels.csv").write_text("\n".join(rows) + "\n")
    scan = from_csv(class_folder / "labels.csv")
    assert len(scan.samples) == 30
    assert {s.split for s in scan.samples} == {"train", "valid"}
    assert [p.name for p, _ in scan.skipped] == ["missing.png"]


def test_tsv_and_custom_columns_and_groups(class_folder: Path) -> None:
    paths = sorted(class_folder.rglob("*.png"))
    lines = ["file\tcategory\tpet"] + [f"{p}\t{p.parent.name}\tpet{i // 2}" for i, p in enumerate(paths)]
    (class_folder / "labels.tsv").write_text("\n".join(lines))
    scan = scan_source(class_folder / "labels.tsv", csv_path_col="file", csv_label_col="category", group_col="pet")
    assert len(scan.samples) == 30 and scan.samples[0].group == "pet0"


def test_csv_errors_name_the_file_and_fix(tmp_path: Path) -> None:
    csv_file = tmp_path / "l.csv"
    csv_file.write_text("filename,label\na.png,cat\n")
    with pytest.raises(DatasetError, match=r"l\.csv: no column 'path'.*path_col"):
        from_csv(csv_file)
    csv_file.write_text("path,label,split\na.png,cat,holdout\n")
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"l\.csv:2: unknown split 'holdout'"):
        from_csv(csv_file)


def _pets(root: Path, fashion: dict) -> Path:
    root.mkdir()
    images = fashion["train_images"]
    for i, name in enumerate(["Abyssinian_1", "Abyssinian_2", "beagle_1", "beagle_2", "Bengal_7", "boxer_3"]):
        Image.fromarray(images[i]).save(root / f"{name}.jpg")
    return root


def test_labels_from_name_regex(tmp_path: Path, fashion: dict) -> None:
    scan = from_name_re(_pets(tmp_path / "pets", fashion), r"^(.+)_\d+\.jpg$")
    assert scan.classes == ["Abyssinian", "beagle", "Bengal", "boxer"]
    assert scan.kind == "name_regex"


def test_name_regex_that_matches_nothing_names_a_file(tmp_path: Path, fashion: dict) -> None:
    with pytest.raises(DatasetError, match=r"Abyssinian_1\.jpg: regex .* matches none of the 6 images"):
        from_name_re(_pets(tmp_path / "pets", fashion), r"^(\d+)\.png$")
    with pytest.raises(DatasetError, match="capturing group"):
        from_name_re(tmp_path / "pets", r"^.+$")


def test_labels_from_name_func(tmp_path: Path, fashion: dict) -> None:
    scan = from_name_func(_pets(tmp_path / "pets", fashion), lambda p: p.name[0].isupper())
    labels = {s.path.name: s.label for s in scan.samples}
    assert labels["Abyssinian_1.jpg"] == "True" and labels["beagle_1.jpg"] == "False"


def test_group_regex(tmp_path: Path, fashion: dict) -> None:
    scan = from_name_re(_pets(tmp_path / "pets", fashion), r"^([^_]+)_", group_regex=r"_(\d)\.jpg$")
    groups = {s.path.name: s.group for s in scan.samples}
    assert groups["Abyssinian_1.jpg"] == groups["beagle_1.jpg"] == "1"


def test_missing_or_empty_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        from_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no labelled images found"):
        from_folder(tmp_path / "empty")


def test_extensions_any_case(tmp_path: Path) -> None:
    for i, ext in enumerate([".JPG", ".Png", ".jpeg", ".WebP", ".bmp", ".gif", ".TIF", ".tiff"]):
        folder = tmp_path / "d" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(folder / f"x{i}{ext}")
    assert len(from_folder(tmp_path / "d").samples) == 8


def test_natural_label_order() -> None:
    assert sort_labels(["10", "2", "b", "A", "1"]) == ["1", "2", "10", "A", "b"]


def test_symlink_loop_is_reported_not_walked(class_folder: Path) -> None:
    (class_folder / "trouser" / "loop").symlink_to("..")  # os.walk(followlinks=True) copied every class in, 141x
    scan = from_folder(class_folder)
    assert Counter(s.label for s in scan.samples) == {"sneaker": 10, "t-shirt_top": 10, "trouser": 10}
    assert all(s.path.parent.name == s.label for s in scan.samples)
    assert [(f.path, f.kind) for f in scan.links] == [(class_folder / "trouser" / "loop", "loop")]


def test_a_file_reached_twice_through_links_is_listed_once(class_folder: Path) -> None:
    trouser = class_folder / "trouser"
    (trouser / "again.png").symlink_to("trouser_001.png")
    (trouser / "sub").mkdir()
    shutil.move(trouser / "trouser_009.png", trouser / "sub" / "moved.png")
    (trouser / "a_link_to_sub").symlink_to("sub")  # sorts before sub/: the direct path must still win
    scan = from_folder(class_folder)
    listed = sorted(s.path.relative_to(trouser).as_posix() for s in scan.samples if s.label == "trouser")
    assert len(listed) == 10 and "sub/moved.png" in listed and "trouser_001.png" in listed
    repeats = {f.path.relative_to(trouser).as_posix(): f.kind for f in scan.links}
    assert repeats == {"again.png": "repeat", "a_link_to_sub": "repeat"}


def test_links_leaving_the_root_are_followed_and_reported(class_folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(class_folder / "sneaker" / "sneaker_000.png", outside / "kept.png")
    (class_folder / "sneaker" / "farm").symlink_to(outside)
    (class_folder / "trouser" / "up").symlink_to(tmp_path)  # contains the data root: a loop, not followed
    scan = from_folder(class_folder)
    assert Counter(s.label for s in scan.samples) == {"sneaker": 10, "t-shirt_top": 10, "trouser": 10}
    found = {(f.path.relative_to(class_folder).as_posix(), f.target, f.kind) for f in scan.links}
    assert found == {("sneaker/farm", outside, "outside_root"), ("trouser/up", tmp_path, "loop")}


def test_class_folder_linked_to_the_root_is_a_loop_not_a_class(class_folder: Path) -> None:
    (class_folder / "everything").symlink_to(".")
    scan = from_folder(class_folder)
    assert scan.classes == ["sneaker", "t-shirt_top", "trouser"] and len(scan.samples) == 30
    assert [f.kind for f in scan.links] == ["loop"] and scan.empty_classes == []


def test_csv_row_repeating_a_file_is_used_once(class_folder: Path) -> None:
    csv_file = write_labels_csv(class_folder, "./trouser/trouser_002.png,trouser")  # line 32, same file as line 24
    scan = from_csv(csv_file)
    assert len(scan.samples) == 30
    assert [(p.name, why) for p, why in scan.repeated_rows] == [
        ("trouser_002.png", "labels.csv:32 repeats line 24; used once")
    ]
    assert scan.label_conflicts == []


def test_csv_file_under_two_labels_is_left_out_and_recorded(class_folder: Path) -> None:
    scan = from_csv(write_labels_csv(class_folder, "trouser/trouser_002.png,sneaker"))
    assert len(scan.samples) == 29 and class_folder / "trouser/trouser_002.png" not in {s.path for s in scan.samples}
    (conflict,) = scan.label_conflicts
    assert conflict.rows == ((24, "trouser"), (32, "sneaker")) and conflict.labels == ["sneaker", "trouser"]
