"""Sources: what the first tests left open (found by `make mutation`, see docs/mutation.md).

Each test is a promise of the README or a docstring: the CSV forms users really have (a BOM, a
tab-separated .csv, short rows), every source's one-line error naming the file and the fix, groups
from names in every source, and what is passed over and why.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_class_folders
from visiontune.data.sources import (
    from_csv,
    from_folder,
    from_name_func,
    from_name_re,
    relative_posix,
    scan_source,
    sort_labels,
)
from visiontune.errors import DatasetError

CLASSES = ["sneaker", "t-shirt_top", "trouser"]


@pytest.fixture
def small(tmp_path: Path, fashion: dict[str, np.ndarray]) -> Path:
    """tmp/data/{t-shirt_top,trouser,sneaker}/*.png, 3 real images each (names like trouser_002.png)."""
    return write_class_folders(tmp_path / "data", fashion, per_class=3)


def _csv(folder: Path, name: str, lines: list[str], *, encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def _error(call: Callable[..., object], *args: object, **kwargs: object) -> str:
    with pytest.raises(DatasetError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_scan_source_reads_a_csv_with_the_documented_header(small: Path) -> None:
    """`path,label,split` are the default columns; `val` is the valid split; the root is the CSV's folder."""
    csv = _csv(
        small,
        "labels.CSV",
        ["path,label,split", "trouser/trouser_000.png,trouser,val", "sneaker/sneaker_000.png,sneaker,train"],
    )
    scan = scan_source(csv)
    assert (scan.kind, scan.root) == ("csv", small)
    assert [(s.path.name, s.label, s.split) for s in scan.samples] == [
        ("trouser_000.png", "trouser", "valid"),
        ("sneaker_000.png", "sneaker", "train"),
    ]


def test_scan_source_passes_every_column_name_and_the_regexes(small: Path) -> None:
    csv = _csv(small, "labels.tsv", ["file\tkind\tfold\towner", "trouser/trouser_000.png\ttrouser\ttest\tann"])
    scan = scan_source(csv, csv_path_col="file", csv_label_col="kind", csv_split_col="fold", group_col="owner")
    assert [(s.label, s.split, s.group) for s in scan.samples] == [("trouser", "test", "ann")]
    by_name = scan_source(small, label_regex=r"^([a-z]+)_", group_regex=r"_(\d+)\.png$")
    assert {(s.label, s.group) for s in by_name.samples if s.path.name == "trouser_001.png"} == {("trouser", "001")}
    folders = scan_source(small, group_regex=r"_(\d+)\.png$")
    assert folders.kind == "folder" and {s.group for s in folders.samples} == {"000", "001", "002"}
    assert _error(scan_source, small, group_col="owner") == (
        "`group_col` applies to CSV sources; for folders use `group_regex`"
    )


def test_group_regex_reaches_split_folders_and_leaves_unmatched_names_ungrouped(tmp_path: Path, fashion: dict) -> None:
    root = tmp_path / "d"
    write_class_folders(root / "train", fashion, per_class=2)
    write_class_folders(root / "valid", fashion, per_class=1)
    scan = from_folder(root, group_regex=r"^(trouser)_")
    groups = {(s.split, s.path.name): s.group for s in scan.samples}
    assert groups[("train", "trouser_001.png")] == groups[("valid", "trouser_000.png")] == "trouser"
    assert groups[("train", "sneaker_000.png")] is None
    assert all(s.group is None for s in from_folder(root).samples)  # no regex: no group, so nothing is tied
    assert _error(from_folder, root, group_regex=r"^trouser_") == "group regex '^trouser_' needs one capturing group"


def test_a_csv_saved_by_excel_with_a_byte_order_mark_reads(small: Path) -> None:
    csv = _csv(small, "labels.csv", ["path,label", "trouser/trouser_000.png,trouser"], encoding="utf-8-sig")
    assert [s.label for s in from_csv(csv).samples] == ["trouser"]


def test_the_delimiter_follows_the_suffix_or_the_header(small: Path) -> None:
    tabbed = _csv(small, "labels.csv", ["path\tlabel", "trouser/trouser_000.png\ttrouser"])
    assert [s.label for s in from_csv(tabbed).samples] == ["trouser"]
    commas_in_tsv = _csv(small, "other.TSV", ["path,label", "trouser/trouser_000.png,trouser"])
    assert _error(from_csv, commas_in_tsv) == (
        f"{commas_in_tsv}: no column 'path' (tab-separated header: path,label); "
        "name the columns path,label or pass path_col/label_col"
    )
    wrong = _csv(small, "wrong.csv", ["filename,label", "a.png,cat"])
    assert _error(from_csv, wrong) == (
        f"{wrong}: no column 'path' (comma-separated header: filename, label); "
        "name the columns path,label or pass path_col/label_col"
    )


def test_short_rows_leave_the_optional_cells_empty(small: Path) -> None:
    csv = _csv(
        small,
        "labels.csv",
        ["path,label,split", "trouser/trouser_000.png,trouser", "sneaker/sneaker_000.png,sneaker,test"],
    )
    assert [s.split for s in from_csv(csv).samples] == [None, "test"]


def test_csv_errors_are_one_line_naming_the_file_and_the_fix(small: Path) -> None:
    missing = small / "nope.csv"
    assert _error(from_csv, missing) == f"{missing}: no such CSV file"
    empty = _csv(small, "empty.csv", [""])
    assert _error(from_csv, empty) == f"{empty}: the CSV is empty; it needs a header such as path,label"
    header_only = _csv(small, "header.csv", ["path,label"])
    assert _error(from_csv, header_only) == (
        f"{small}: no labelled images found; check the path column: paths are relative to the CSV's folder"
    )
    no_label = _csv(small, "nolabel.csv", ["path,label", "trouser/trouser_000.png,trouser", "trouser/trouser_001.png,"])
    assert _error(from_csv, no_label) == f"{no_label}:3: empty 'label'; every row needs both"
    no_path = _csv(small, "nopath.csv", ["path,label", ",trouser"])
    assert _error(from_csv, no_path) == f"{no_path}:2: empty 'path'; every row needs both"


def test_a_csv_whose_only_file_has_two_labels_is_refused_with_both_rows(small: Path) -> None:
    csv = _csv(
        small, "labels.csv", ["path,label", "trouser/trouser_000.png,trouser", "./trouser/trouser_000.png,sneaker"]
    )
    assert _error(from_csv, csv) == (
        f"{csv}: trouser/trouser_000.png is listed as 'trouser' (line 2) and 'sneaker' (line 3); remove one of the rows"
    )


def test_files_passed_over_are_reported_with_the_reason(small: Path) -> None:
    (small / "trouser" / "notes.txt").write_text("x")
    (small / "trouser" / "LICENSE").write_text("x")
    (small / "README.md").write_text("x")
    (small / ".DS_Store").write_text("x")
    (small / ".cache").mkdir()
    shutil.copy(small / "trouser" / "trouser_000.png", small / ".cache" / "hidden.png")
    scan = from_folder(small)
    assert scan.classes == CLASSES and scan.empty_classes == []
    assert [(p.relative_to(small).as_posix(), why) for p, why in scan.skipped] == [
        ("trouser/LICENSE", "unsupported file extension '(none)'"),
        ("trouser/notes.txt", "unsupported file extension '.txt'"),
        ("README.md", "not inside a class folder"),
    ]
    csv = _csv(
        small,
        "labels.csv",
        ["path,label", "trouser/notes.txt,trouser", "trouser/LICENSE,trouser", "trouser/trouser_000.png,trouser"],
    )
    assert [(p.name, why) for p, why in from_csv(csv).skipped] == [
        ("notes.txt", "unsupported file extension '.txt'"),
        ("LICENSE", "unsupported file extension '(none)'"),
    ]


def test_split_folders_report_what_is_outside_them(tmp_path: Path, fashion: dict) -> None:
    root = tmp_path / "d"
    write_class_folders(root / "train", fashion, per_class=1)
    write_class_folders(root / "extra", fashion, per_class=1, classes=(0,))  # sorts before train/
    (root / "notes.txt").write_text("x")
    (root / ".hidden.txt").write_text("x")
    scan = from_folder(root)
    assert (scan.kind, scan.root) == ("split_folders", root) and len(scan.samples) == 3
    assert [(p.relative_to(root).as_posix(), why) for p, why in scan.skipped] == [
        ("extra/t-shirt_top/t-shirt_top_000.png", "folder extra/ is not a split name"),
        ("notes.txt", "not inside a split folder"),
    ]


def test_split_folder_errors_name_the_folders(tmp_path: Path, fashion: dict) -> None:
    root = tmp_path / "d"
    write_class_folders(root / "test", fashion, per_class=1, split="test")
    write_class_folders(root / "val", fashion, per_class=1)
    assert _error(from_folder, root) == f"{root}: found test, val/ but no train/ folder; add one"
    write_class_folders(root / "train", fashion, per_class=1)
    write_class_folders(root / "valid", fashion, per_class=1)
    assert _error(from_folder, root) == f"{root}: both val/ and valid/ look like the valid split; keep one"


def test_folder_errors_name_the_folder_and_the_fix(tmp_path: Path, small: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(from_folder, empty) == (
        f"{empty}: no labelled images found; put images in one folder per class, e.g. photos/cat/1.jpg"
    )
    assert _error(from_name_re, empty, r"^(.+)_") == f"{empty}: no labelled images found; point at a folder of images"
    file = small / "trouser" / "trouser_000.png"
    assert _error(from_folder, file) == f"{file}: not a folder; give a folder of class folders or a .csv/.tsv file"
    assert _error(from_name_re, small, "(") == (
        "label regex '(' is not a valid regular expression: missing ), unterminated subpattern at position 0"
    )


def test_a_label_regex_with_a_slash_reads_the_relative_path_and_without_one_the_name(small: Path) -> None:
    by_folder = from_name_re(small, r"^([^/]+)/")
    assert all(s.label == s.path.parent.name for s in by_folder.samples) and len(by_folder.samples) == 9
    nested = small / "trouser" / "old"
    nested.mkdir()
    shutil.copy(small / "trouser" / "trouser_000.png", nested / "coat_7.png")
    by_name = from_name_re(small, r"^(.+)_\d+\.png$")
    assert sort_labels(s.label for s in by_name.samples) == ["coat", *CLASSES]
    assert by_name.root == small and by_name.kind == "name_regex"


def test_a_label_function_skips_none_and_empty_labels_and_warns(small: Path, caplog: pytest.LogCaptureFixture) -> None:
    labels = {"trouser": "trouser", "sneaker": None, "t-shirt_top": ""}
    with caplog.at_level(logging.WARNING, logger="visiontune.data.sources"):
        scan = from_name_func(small, lambda p: labels[p.parent.name], group_regex=r"_(\d+)\.png$")
    assert (scan.kind, scan.root) == ("name_func", small)
    assert [(s.label, s.group) for s in scan.samples] == [("trouser", f"{i:03d}") for i in range(3)]
    assert [why for _, why in scan.skipped] == ["the label function gave no label"] * 6
    assert caplog.messages == ["the label function gave no label for 6 of 9 images (listed in the audit)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="visiontune.data.sources"):
        from_name_func(small, lambda p: p.parent.name)
    assert caplog.messages == []  # every image labelled: nothing to warn about


def test_labelling_by_name_records_the_links_it_did_not_follow(small: Path) -> None:
    (small / "trouser" / "loop").symlink_to("..")
    scan = from_name_re(small, r"^(.+)_\d+\.png$")
    assert [(f.path, f.kind) for f in scan.links] == [(small / "trouser" / "loop", "loop")]
    assert len(scan.samples) == 9


def test_class_order_is_natural_within_names() -> None:
    assert sort_labels(["img10", "img2", "Img1", "img1"]) == ["Img1", "img1", "img2", "img10"]


def test_relative_posix_names_files_under_the_root_relatively_and_others_absolutely() -> None:
    assert relative_posix(Path("/data/a/1.png"), Path("/data")) == "a/1.png"
    assert relative_posix("/elsewhere/1.png", "/data") == "/elsewhere/1.png"
    assert relative_posix("a/1.png", None) == "a/1.png"
