"""Train/valid/test splits that are stratified, repeatable on any machine, and leakage-safe.

Samples are first joined into groups (near-duplicate images, and whatever the user says belongs
together: one pet, one patient); whole groups are then dealt to the splits class by class, so a
photo and its re-encoded copy never sit on both sides. The order depends only on relative paths,
file contents and the seed, never on the file system's listing order or the platform.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visiontune.data.duplicates import components
from visiontune.data.sources import Sample, relative_posix


def group_ids(samples: Sequence[Sample], links: Sequence[tuple[int, int]]) -> list[int]:
    """One id per sample: samples linked directly (duplicates) or by the same user group share an id."""
    first_of_group: dict[str, int] = {}
    same_group = [(first_of_group.setdefault(s.group, i), i) for i, s in enumerate(samples) if s.group is not None]
    return components(len(samples), [*links, *same_group])


def assign_splits(
    samples: Sequence[Sample],
    *,
    root: Path,
    groups: Sequence[int] | None = None,
    valid_pct: float = 0.2,
    test_pct: float = 0.0,
    seed: int = 42,
) -> list[Sample]:
    """Give every sample a split; splits the source already set are kept.

    A missing valid (or test, when `test_pct` > 0) split is carved out of the training samples,
    `valid_pct` of each class, moving whole groups.
    """
    groups = list(groups) if groups is not None else list(range(len(samples)))
    present = {s.split for s in samples}
    splits = ["train" if s.split is None else s.split for s in samples]
    carve = [(name, pct) for name, pct in (("valid", valid_pct), ("test", test_pct)) if pct > 0 and name not in present]
    if carve:
        pool = [i for i, split in enumerate(splits) if split == "train"]
        for index, split in _deal(samples, pool, groups, carve, root=root, seed=seed).items():
            splits[index] = split
    return [dataclasses.replace(s, split=split) for s, split in zip(samples, splits, strict=True)]


def _deal(
    samples: Sequence[Sample],
    pool: list[int],
    groups: Sequence[int],
    carve: list[tuple[str, float]],
    *,
    root: Path,
    seed: int,
) -> dict[int, str]:
    """Deal shuffled groups to the carved splits until each class reaches its target count."""
    units = _units(samples, pool, groups, root)
    order = np.random.default_rng(seed).permutation(len(units))
    class_sizes = Counter(samples[i].label for i in pool)
    targets = {name: {c: round(pct * n) for c, n in class_sizes.items()} for name, pct in carve}
    counts: dict[str, Counter[str]] = {name: Counter() for name, _ in carve}
    assigned: dict[int, str] = {}
    for position in order:
        label, members = units[position]
        for name, _ in carve:
            now, goal = counts[name][label], targets[name][label]
            if abs(now + len(members) - goal) < abs(now - goal):
                counts[name][label] += len(members)
                assigned.update((i, name) for i in members)
                break
    return assigned


def _units(
    samples: Sequence[Sample], pool: list[int], groups: Sequence[int], root: Path
) -> list[tuple[str, list[int]]]:
    """Groups of pool indices in a platform-independent order, each labelled by its most common class."""
    members: dict[int, list[int]] = defaultdict(list)
    for i in pool:
        members[groups[i]].append(i)

    def key(i: int) -> str:
        return relative_posix(samples[i].path, root)

    units = []
    for indices in members.values():
        indices.sort(key=key)
        label = Counter(samples[i].label for i in indices).most_common(1)[0][0]
        units.append((label, indices))
    units.sort(key=lambda unit: key(unit[1][0]))
    return units


def subsample(samples: Sequence[Sample], fraction: float, *, root: Path, seed: int = 42) -> list[Sample]:
    """A stratified `fraction` of the train and valid samples (at least one per class); test is kept whole.

    For fast experiments: 10% of the data shows whether an idea works before an hour is spent.
    """
    if fraction >= 1.0:
        return list(samples)
    rng = np.random.default_rng(seed + 1)
    cells: dict[tuple[str | None, str], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        cells[(s.split, s.label)].append(i)
    keep: set[int] = set()
    for (split, _), indices in sorted(cells.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        if split == "test":
            keep.update(indices)
            continue
        indices.sort(key=lambda i: relative_posix(samples[i].path, root))
        n = max(1, math.ceil(fraction * len(indices)))
        keep.update(indices[k] for k in rng.choice(len(indices), n, replace=False))
    return [s for i, s in enumerate(samples) if i in keep]
