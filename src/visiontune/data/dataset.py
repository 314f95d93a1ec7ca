"""`load_data`: from a source (folder, CSV, names) to checked, split, labelled images.

This is the data layer's one entry point: scan the source, read every file once (hash, header,
decode check), drop what can't be decoded, group duplicates, split, subsample, and check that
each class is present where training needs it. What the scan listed once or left out (symbolic
links, repeated CSV rows, files a CSV gives two labels) is logged here and kept for the audit.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from visiontune.config import DataConfig
from visiontune.data import duplicates, split
from visiontune.data.corrections import Applied, apply_corrections
from visiontune.data.fileinfo import FileInfo, scan_files
from visiontune.data.sources import (
    SPLITS,
    LabelConflict,
    Sample,
    Scan,
    from_name_func,
    relative_posix,
    scan_source,
    sort_labels,
)
from visiontune.data.walk import LinkFinding
from visiontune.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class LabelledImages:
    """Usable samples with their split, the class order, and everything that was passed over."""

    root: Path
    kind: str
    classes: list[str]
    samples: list[Sample]
    infos: dict[Path, FileInfo]
    unreadable: list[FileInfo] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    duplicate_links: dict[str, list[tuple[Path, Path]]] = field(default_factory=dict)  # "exact"/"near" path pairs
    links: list[LinkFinding] = field(default_factory=list)
    repeated_rows: list[tuple[Path, str]] = field(default_factory=list)
    label_conflicts: list[LabelConflict] = field(default_factory=list)
    corrections: Applied | None = None  # what corrections.csv changed (data/corrections.py)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    @property
    def splits(self) -> list[str]:
        present = {s.split for s in self.samples}
        return [name for name in SPLITS if name in present]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class for each split, classes in class order."""
        result = {}
        for name in self.splits:
            per_class = Counter(s.label for s in self.split(name))
            result[name] = {c: per_class.get(c, 0) for c in self.classes}
        return result

    def manifest_hash(self) -> str:
        """A hash of what a model is trained on: relative paths, contents, labels and splits."""
        digest = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: relative_posix(s.path, self.root)):
            digest.update(
                f"{relative_posix(s.path, self.root)}\t{self.infos[s.path].sha256}\t{s.label}\t{s.split}\n".encode()
            )
        return digest.hexdigest()

    def check(self) -> None:
        """Raise DatasetError unless every file has one label, there are two classes, and each is in every split."""
        self.check_labels()
        self.check_classes()

    def check_labels(self) -> None:
        """Raise DatasetError when the source lists a file under two labels: no label can be trusted."""
        if self.label_conflicts:
            raise DatasetError(label_conflict_message(self.label_conflicts))

    def check_classes(self) -> None:
        """Raise DatasetError unless there are two classes and each has images in every split."""
        if len(self.classes) < 2:
            found = self.classes[0] if self.classes else "none"
            raise DatasetError(f"{self.root}: found one class ({found}); a classifier needs at least two class folders")
        for name, per_class in self.counts().items():
            missing = [c for c, n in per_class.items() if n == 0]
            if missing:
                raise DatasetError(
                    f"{self.root}: class {missing[0]!r} has no images in the {name} split; "
                    "add images or lower valid_pct"
                )


def label_conflict_message(conflicts: list[LabelConflict]) -> str:
    """One line: the first conflict in full, and how many more there are."""
    more = len(conflicts) - 1
    return conflicts[0].describe() + (f" ({more} more such file(s): `visiontune inspect` lists them)" if more else "")


def load_data(
    source: str | Path | Scan,
    config: DataConfig | None = None,
    *,
    label_func: Callable[[Path], object] | None = None,
    check: bool = True,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> LabelledImages:
    """Scan, read, split and check a data set.

    Example:
        >>> data = load_data("photos", DataConfig(valid_pct=0.2, seed=42))
        >>> data.classes, len(data.split("train"))
    """
    config = config or DataConfig()
    scan, applied = apply_corrections(_scan(source, config, label_func), config.corrections)
    if applied is not None:
        log.warning("%s", applied.describe())
    if check and scan.label_conflicts:  # before reading any file: this needs a fix in the CSV
        raise DatasetError(label_conflict_message(scan.label_conflicts))
    _log_findings(scan)
    paths = [s.path for s in scan.samples]
    if on_total:
        on_total(len(paths))
    infos = scan_files(paths, max_pixels=config.max_pixels, use_cache=use_cache, progress=progress)
    by_path = {Path(i.path): i for i in infos}
    good = [s for s in scan.samples if by_path[s.path].ok]
    unreadable = [i for i in infos if not i.ok]
    for info in unreadable:
        log.warning("skipping %s: %s", info.path, info.error)
    links = _duplicate_links([by_path[s.path] for s in good], config)
    samples = _split(good, links, scan.root, config)
    data = LabelledImages(scan.root, scan.kind, sort_labels(s.label for s in samples), samples, by_path, unreadable)
    data.skipped, data.empty_classes = scan.skipped, scan.empty_classes
    data.links, data.repeated_rows, data.label_conflicts = scan.links, scan.repeated_rows, scan.label_conflicts
    data.corrections = applied
    data.duplicate_links = {kind: [(good[a].path, good[b].path) for a, b in pairs] for kind, pairs in links.items()}
    if check:
        data.check()
    return data


def _log_findings(scan: Scan) -> None:
    """One warning per kind of finding, with an example: a symlink farm may hold thousands of links."""
    for kind in ("loop", "outside_root", "repeat"):
        found = [f for f in scan.links if f.kind == kind]
        if found:
            first = found[0]
            log.warning("%d symbolic link(s) %s, e.g. %s -> %s", len(found), first.note, first.path, first.target)
    if scan.repeated_rows:
        path, why = scan.repeated_rows[0]
        log.warning("%d CSV row(s) repeat a file with the same label, e.g. %s (%s)", len(scan.repeated_rows), path, why)
    if scan.label_conflicts:
        log.warning("left out: %s", label_conflict_message(scan.label_conflicts))


def _scan(source: str | Path | Scan, config: DataConfig, label_func: Callable[[Path], object] | None) -> Scan:
    if isinstance(source, Scan):
        return source
    if label_func is not None:
        return from_name_func(source, label_func, group_regex=config.group_regex)
    return scan_source(
        source,
        label_regex=config.label_regex,
        csv_path_col=config.csv_path_col,
        csv_label_col=config.csv_label_col,
        csv_split_col=config.csv_split_col,
        group_col=config.group_col,
        group_regex=config.group_regex,
    )


def _duplicate_links(infos: list[FileInfo], config: DataConfig) -> dict[str, list[tuple[int, int]]]:
    """Index pairs of exact and near duplicates among the readable samples (the split and the audit use both)."""
    return {
        "exact": duplicates.exact_pairs(infos),
        "near": duplicates.near_pairs(infos, max_distance=config.near_duplicate_distance),
    }


def _split(
    samples: list[Sample], links: dict[str, list[tuple[int, int]]], root: Path, config: DataConfig
) -> list[Sample]:
    together = links["exact"] + (links["near"] if config.near_duplicate_split else [])
    groups = split.group_ids(samples, together)
    assigned = split.assign_splits(
        samples, root=root, groups=groups, valid_pct=config.valid_pct, test_pct=config.test_pct, seed=config.seed
    )
    return split.subsample(assigned, config.sample, root=root, seed=config.seed)
