"""The split's promises that the first tests left open (found by `make mutation`, see docs/mutation.md).

A split must not move when the listing order or the data folder's location changes, groups must
be ordered by their members' relative paths, and the library's defaults must be the CLI's.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from visiontune.config import DataConfig
from visiontune.data.sources import Sample
from visiontune.data.split import assign_splits, group_ids, subsample

ROOT = Path("/data")


def _samples(root: Path, per_class: dict[str, int]) -> list[Sample]:
    return [Sample(root / label / f"{i:03d}.png", label) for label, n in per_class.items() for i in range(n)]


def _moved(samples: list[Sample], old: Path, new: Path) -> list[Sample]:
    """The same samples with the data folder moved from `old` to `new` (files outside it stay where they are)."""
    return [
        Sample(new / s.path.relative_to(old), s.label, s.split, s.group) if s.path.is_relative_to(old) else s
        for s in samples
    ]


def _splits(samples: list[Sample]) -> dict[Path, str | None]:
    return {s.path: s.split for s in samples}


def test_the_library_defaults_are_the_configs() -> None:
    """`assign_splits` and `subsample` called with defaults give the split `visiontune train` gives (seed 42)."""
    config = DataConfig()
    samples = _samples(ROOT, {"a": 30, "b": 30})
    assert _splits(assign_splits(samples, root=ROOT)) == _splits(
        assign_splits(samples, root=ROOT, valid_pct=config.valid_pct, test_pct=config.test_pct, seed=config.seed)
    )
    split = assign_splits(samples, root=ROOT)
    assert subsample(split, 0.3, root=ROOT) == subsample(split, 0.3, root=ROOT, seed=config.seed)


def test_a_moved_data_folder_keeps_its_split_with_files_listed_outside_it() -> None:
    """A CSV may list files outside its folder: moving the folder still must not move the split."""
    outside = [Sample(Path("/m/extra") / f"{i:03d}.png", "ab"[i % 2]) for i in range(20)]
    here = _samples(ROOT, {"a": 20, "b": 20}) + outside
    there_root = Path("/z/data")  # sorts after /m where /data sorts before it
    there = _moved(here, ROOT, there_root)
    first = assign_splits(here, root=ROOT, seed=3)
    again = assign_splits(there, root=there_root, seed=3)
    assert [s.split for s in first] == [s.split for s in again]
    small_here = subsample(first, 0.5, root=ROOT, seed=3)
    small_there = subsample(again, 0.5, root=there_root, seed=3)
    assert _moved(small_here, ROOT, there_root) == small_there


def test_groups_split_the_same_whatever_the_listing_order() -> None:
    """Within a group, members are ordered by relative path, so the group's place never follows the listing."""
    samples = [Sample(ROOT / "a" / f"{i:03d}.png", "a", group=f"pet{i % 10}") for i in range(30)]
    samples += [Sample(ROOT / "b" / f"{i:03d}.png", "b", group=f"dog{i % 10}") for i in range(30)]
    reordered = [samples[(7 * i) % len(samples)] for i in range(len(samples))]  # 7 is prime to 60: a shuffle
    first = assign_splits(samples, root=ROOT, groups=group_ids(samples, []), seed=4)
    again = assign_splits(reordered, root=ROOT, groups=group_ids(reordered, []), seed=4)
    assert _splits(first) == _splits(again)


def test_subsample_is_the_same_whatever_the_listing_order() -> None:
    samples = assign_splits(_samples(ROOT, {"a": 40, "b": 40}), root=ROOT, valid_pct=0.25, seed=1)
    small = subsample(samples, 0.3, root=ROOT, seed=5)
    assert samples[0].split == "train"
    valid_first = sorted(reversed(samples), key=lambda s: s.split != "valid")
    assert set(subsample(valid_first, 0.3, root=ROOT, seed=5)) == set(small)


def test_subsample_draws_distinct_samples() -> None:
    """Half of each train/valid cell, ceil-rounded: no sample drawn twice in place of another."""
    samples = assign_splits(_samples(ROOT, {"a": 40, "b": 21}), root=ROOT, valid_pct=0.25, seed=1)
    small = subsample(samples, 0.5, root=ROOT, seed=2)
    full = Counter((s.split, s.label) for s in samples)
    assert Counter((s.split, s.label) for s in small) == {cell: -(-n // 2) for cell, n in full.items()}


def test_subsample_of_everything_is_everything() -> None:
    samples = assign_splits(_samples(ROOT, {"a": 5, "b": 5}), root=ROOT)
    assert subsample(samples, 1.0, root=ROOT) == samples
