from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import write_class_folders, write_labels_csv
from visiontune.config import DataConfig
from visiontune.data.dataset import load_data
from visiontune.data.fileinfo import scan_files
from visiontune.errors import ConfigError, DatasetError


def test_class_folder_gets_stratified_valid_split(class_folder: Path) -> None:
    data = load_data(class_folder)
    assert data.classes == ["sneaker", "t-shirt_top", "trouser"]
    assert data.class_to_idx == {"sneaker": 0, "t-shirt_top": 1, "trouser": 2}
    assert data.counts() == {"train": dict.fromkeys(data.classes, 8), "valid": dict.fromkeys(data.classes, 2)}


def test_split_is_identical_for_a_copy_of_the_folder(class_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(class_folder, copy)
    a = load_data(class_folder, DataConfig(seed=3))
    b = load_data(copy, DataConfig(seed=3), use_cache=False)
    assert [(s.path.relative_to(class_folder), s.split) for s in a.samples] == [
        (s.path.relative_to(copy), s.split) for s in b.samples
    ]
    assert a.manifest_hash() == b.manifest_hash()


def test_manifest_hash_changes_with_content(class_folder: Path) -> None:
    before = load_data(class_folder).manifest_hash()
    target = next((class_folder / "trouser").glob("*.png"))
    Image.open(target).rotate(90).save(target)
    assert load_data(class_folder).manifest_hash() != before


def test_copies_never_straddle_the_split(class_folder: Path) -> None:
    for k, path in enumerate(sorted((class_folder / "trouser").glob("*.png"))[:4]):
        shutil.copy(path, path.with_name(f"copy{k}.png"))  # exact duplicate
        Image.open(path).save(path.with_name(f"near{k}.jpg"), quality=80)  # near duplicate
    for seed in range(5):
        data = load_data(class_folder, DataConfig(seed=seed))
        split_of = {s.path.name: s.split for s in data.samples}
        for k, path in enumerate(sorted((class_folder / "trouser").glob("trouser_*.png"))[:4]):
            assert split_of[path.name] == split_of[f"copy{k}.png"] == split_of[f"near{k}.jpg"]


def test_undecodable_files_are_skipped_and_reported(class_folder: Path) -> None:
    (class_folder / "trouser" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (class_folder / "sneaker" / "text.jpg").write_text("hello")
    data = load_data(class_folder)
    assert sorted(Path(i.path).name for i in data.unreadable) == ["broken.png", "text.jpg"]
    assert all(s.path.name not in {"broken.png", "text.jpg"} for s in data.samples)
    assert len(data.samples) == 30


def test_single_class_is_a_clear_error(tmp_path: Path, fashion: dict) -> None:
    write_class_folders(tmp_path / "d", fashion, classes=(3,))
    with pytest.raises(DatasetError, match=r"found one class \(dress\).*at least two"):
        load_data(tmp_path / "d")


def test_class_missing_from_a_split_is_a_clear_error(split_folder: Path) -> None:
    shutil.rmtree(split_folder / "test" / "trouser")
    with pytest.raises(DatasetError, match="class 'trouser' has no images in the test split"):
        load_data(split_folder)


def test_sample_fraction(tmp_path: Path, fashion: dict) -> None:
    write_class_folders(tmp_path / "d", fashion, per_class=50)
    data = load_data(tmp_path / "d", DataConfig(sample=0.1))
    counts = Counter((s.split, s.label) for s in data.samples)
    assert set(counts.values()) == {4, 1}  # 40 train -> 4, 10 valid -> 1 per class


def test_label_function_source(tmp_path: Path, fashion: dict) -> None:
    write_class_folders(tmp_path / "d", fashion, classes=(0, 5), per_class=10)
    data = load_data(tmp_path / "d", label_func=lambda p: "shoe" if "sandal" in p.name else "top")
    assert data.classes == ["shoe", "top"] and data.kind == "name_func"


def test_bad_config_values_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"`valid_pct` must be in \[0.0, 0.9\]. Received: valid_pct=1.5"):
        DataConfig(valid_pct=1.5)
    with pytest.raises(ConfigError, match="sample"):
        DataConfig(sample=0.0)


def test_file_info_cache_reads_changed_files_only(class_folder: Path, tmp_path: Path) -> None:
    paths = sorted(class_folder.rglob("*.png"))
    cache = tmp_path / "c.sqlite"
    first = scan_files(paths, cache_path=cache)
    target = paths[0]
    Image.open(target).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(target)
    seen: list[int] = []
    second = scan_files(paths, cache_path=cache, progress=seen.append)
    assert seen[0] == len(paths) - 1  # all but the changed file came from the cache at once
    assert second[1:] == first[1:]
    assert second[0].sha256 != first[0].sha256


def test_symlink_loop_is_logged_and_not_trained_on(class_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (class_folder / "trouser" / "loop").symlink_to("..")
    with caplog.at_level(logging.WARNING, logger="visiontune.data.dataset"):
        data = load_data(class_folder)
    assert Counter(s.label for s in data.samples) == {"sneaker": 10, "t-shirt_top": 10, "trouser": 10}
    assert "1 symbolic link(s)" in caplog.text and str(class_folder / "trouser" / "loop") in caplog.text


def test_csv_file_under_two_labels_is_refused_in_one_line(class_folder: Path) -> None:
    csv_file = write_labels_csv(class_folder, "trouser/trouser_002.png,sneaker")
    with pytest.raises(DatasetError) as caught:
        load_data(csv_file)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in (
        str(csv_file),
        "trouser/trouser_002.png",
        "'trouser' (line 24)",
        "'sneaker' (line 32)",
        "remove one",
    ):
        assert fragment in message


def test_csv_repeated_row_trains_once_and_is_logged(class_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv_file = write_labels_csv(class_folder, "trouser/trouser_002.png,trouser")
    with caplog.at_level(logging.WARNING, logger="visiontune.data.dataset"):
        data = load_data(csv_file)
    assert len(data.samples) == 30 and len({s.path for s in data.samples}) == 30
    assert "labels.csv:32 repeats line 24" in caplog.text
