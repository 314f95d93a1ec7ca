from __future__ import annotations

from collections import Counter
from pathlib import Path

from visiontune.data.sources import Sample
from visiontune.data.split import assign_splits, group_ids, subsample

ROOT = Path("/data")


def _samples(per_class: dict[str, int]) -> list[Sample]:
    return [Sample(ROOT / label / f"{i:03d}.png", label) for label, n in per_class.items() for i in range(n)]


def test_stratified_valid_share_per_class() -> None:
    samples = _samples({"a": 50, "b": 20, "c": 10})
    out = assign_splits(samples, root=ROOT, valid_pct=0.2, seed=1)
    valid = Counter(s.label for s in out if s.split == "valid")
    assert valid == {"a": 10, "b": 4, "c": 2}
    assert Counter(s.split for s in out) == {"train": 64, "valid": 16}


def test_same_files_and_seed_same_split_whatever_the_listing_order() -> None:
    samples = _samples({"a": 30, "b": 30})
    first = {s.path: s.split for s in assign_splits(samples, root=ROOT, seed=7)}
    again = {s.path: s.split for s in assign_splits(list(reversed(samples)), root=ROOT, seed=7)}
    other = {s.path: s.split for s in assign_splits(samples, root=ROOT, seed=8)}
    assert first == again
    assert first != other


def test_split_independent_of_absolute_location() -> None:
    here = _samples({"a": 20, "b": 20})
    there = [Sample(Path("/elsewhere/x") / s.path.relative_to(ROOT), s.label) for s in here]
    a = [s.split for s in assign_splits(here, root=ROOT, seed=3)]
    b = [s.split for s in assign_splits(there, root=Path("/elsewhere/x"), seed=3)]
    assert a == b


def test_groups_stay_on_one_side() -> None:
    samples = [Sample(ROOT / "a" / f"{i}.png", "a", group=f"pet{i // 4}") for i in range(40)]
    samples += [Sample(ROOT / "b" / f"{i}.png", "b", group=f"dog{i // 4}") for i in range(40)]
    out = assign_splits(samples, root=ROOT, groups=group_ids(samples, []), valid_pct=0.25, seed=0)
    side: dict[str, set[str]] = {}
    for s in out:
        side.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in side.values())
    valid = Counter(s.label for s in out if s.split == "valid")
    assert abs(valid["a"] - 10) <= 2 and abs(valid["b"] - 10) <= 2  # whole groups of 4 can't hit 10 exactly


def test_duplicate_links_keep_copies_together() -> None:
    samples = _samples({"a": 20, "b": 20})
    links = [(i, i + 1) for i in range(0, 40, 2)]  # every pair is a duplicate
    groups = group_ids(samples, links)
    out = assign_splits(samples, root=ROOT, groups=groups, seed=5)
    for a, b in links:
        assert out[a].split == out[b].split


def test_existing_splits_are_kept_and_valid_carved_from_train_only() -> None:
    samples = [Sample(s.path, s.label, "train") for s in _samples({"a": 20, "b": 20})]
    samples += [Sample(ROOT / "test" / f"{i}.png", "a" if i % 2 else "b", "test") for i in range(10)]
    out = assign_splits(samples, root=ROOT, valid_pct=0.2)
    counts = Counter(s.split for s in out)
    assert counts == {"train": 32, "valid": 8, "test": 10}
    assert all(s.split == "test" for s in out if "test" in s.path.parts)


def test_given_valid_split_is_not_recut() -> None:
    samples = [Sample(ROOT / f"{i}.png", "ab"[i % 2], "valid" if i < 4 else None) for i in range(20)]
    out = assign_splits(samples, root=ROOT, valid_pct=0.5)
    assert Counter(s.split for s in out) == {"valid": 4, "train": 16}


def test_test_pct_carves_a_test_split() -> None:
    out = assign_splits(_samples({"a": 40, "b": 40}), root=ROOT, valid_pct=0.2, test_pct=0.1, seed=2)
    assert Counter(s.split for s in out) == {"train": 56, "valid": 16, "test": 8}


def test_subsample_is_stratified_and_keeps_test() -> None:
    samples = assign_splits(_samples({"a": 100, "b": 50}), root=ROOT, valid_pct=0.2, test_pct=0.1)
    small = subsample(samples, 0.1, root=ROOT, seed=1)
    counts = Counter((s.split, s.label) for s in small)
    assert counts[("train", "a")] == 7 and counts[("train", "b")] == 4
    assert counts[("valid", "a")] == 2 and counts[("valid", "b")] == 1
    assert counts[("test", "a")] == 10 and counts[("test", "b")] == 5
    assert subsample(samples, 0.1, root=ROOT, seed=1) == small
