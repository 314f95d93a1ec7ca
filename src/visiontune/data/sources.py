"""Where labels come from: class folders, split folders, a CSV, or the file names.

Every source returns a `Scan`: the labelled samples it found (split set where the source says so)
plus what it passed over and why, so the audit can report it. Each real file is listed once per
class folder (links are followed once, see walk.py) and once per CSV: a repeated CSV row is used
once, and a file the CSV lists under two labels is left out and recorded as a `LabelConflict`,
which `load_data` refuses. Nothing here opens an image.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from visiontune.data.images import is_image_file
from visiontune.data.walk import LinkFinding, walk_files
from visiontune.errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class Sample:
    """One labelled image. `split` is None until the split assigns it; `group` keeps related images together."""

    path: Path
    label: str
    split: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class LabelConflict:
    """One file a CSV lists under more than one label: the (line, label) of every row that lists it."""

    source: Path
    path: Path
    rows: tuple[tuple[int, str], ...]

    @property
    def labels(self) -> list[str]:
        return sort_labels(label for _, label in self.rows)

    def describe(self) -> str:
        """One line naming the CSV, the file and its labels, and the fix."""
        listed = " and ".join(f"{label!r} (line {line})" for line, label in self.rows)
        path = relative_posix(self.path, self.source.parent)
        return f"{self.source}: {path} is listed as {listed}; remove one of the rows"


@dataclass
class Scan:
    """What a source found: samples, plus what it passed over or listed once, and why.

    `skipped`: files passed over; `empty_classes`: class folders without images; `links`: symbolic
    links that loop, leave the root or repeat a file; `repeated_rows`: CSV rows naming a file already
    listed with the same label (used once); `label_conflicts`: files a CSV lists under two labels.
    """

    root: Path
    kind: str
    samples: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    links: list[LinkFinding] = field(default_factory=list)
    repeated_rows: list[tuple[Path, str]] = field(default_factory=list)
    label_conflicts: list[LabelConflict] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sort_labels({s.label for s in self.samples})


def natural_key(text: str) -> tuple[object, ...]:
    """Sort key that puts "2" before "10" and ignores case first, so class order reads naturally."""
    parts = re.split(r"(\d+)", text)
    return (*tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts), text)


def sort_labels(labels: Iterable[str]) -> list[str]:
    """The deterministic class order saved with every run: natural sort of the label strings."""
    return sorted(set(labels), key=natural_key)


def normalise_split(name: str, *, where: str) -> str:
    split = SPLIT_ALIASES.get(name.strip().lower())
    if split is None:
        raise DatasetError(f"{where}: unknown split {name!r}; use one of train, valid (or val/validation), test")
    return split


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def relative_posix(path: str | Path, root: str | Path | None) -> str:
    """`path` relative to `root` as a POSIX string (how runs and manifests name files); itself when not under it."""
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return Path(path).as_posix()


def _partition(files: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    images, skipped = [], []
    for path in files:
        if is_image_file(path):
            images.append(path)
        else:
            skipped.append((path, f"unsupported file extension {path.suffix or '(none)'!r}"))
    return images, skipped


def _subdirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _split_dirs(root: Path) -> dict[str, Path]:
    """Split folders (train/, val/, ...) directly under root that hold class folders."""
    found: dict[str, Path] = {}
    for sub in _subdirs(root):
        split = SPLIT_ALIASES.get(sub.name.lower())
        if split is None or not _subdirs(sub):
            continue
        if split in found:
            raise DatasetError(
                f"{root}: both {found[split].name}/ and {sub.name}/ look like the {split} split; keep one"
            )
        found[split] = sub
    return found


def from_folder(root: str | Path, *, group_regex: str | None = None) -> Scan:
    """Class folders (`root/<class>/*`) or split folders (`root/train/<class>/*`), detected automatically.

    Example:
        >>> scan = from_folder("photos")  # photos/cat/*.jpg, photos/dog/*.jpg
    """
    root = _existing_dir(root)
    splits = _split_dirs(root)
    if "train" in splits:
        scan = Scan(root, "split_folders", [])
        for split, folder in splits.items():
            _add_class_folders(scan, folder, split=split, group_regex=group_regex)
        _skip_loose_files(scan, root, keep=set(splits.values()))
    elif splits:
        raise DatasetError(f"{root}: found {', '.join(p.name for p in splits.values())}/ but no train/ folder; add one")
    else:
        scan = Scan(root, "folder", [])
        _add_class_folders(scan, root, split=None, group_regex=group_regex)
    return _checked(scan, hint="put images in one folder per class, e.g. photos/cat/1.jpg")


def _add_class_folders(scan: Scan, folder: Path, *, split: str | None, group_regex: str | None) -> None:
    for class_dir in _subdirs(folder):
        known = len(scan.links)
        images, skipped = _partition(walk_files(class_dir, root=scan.root, links=scan.links))
        if any(f.path == class_dir and f.kind == "loop" for f in scan.links[known:]):
            continue  # a class folder linked to the root or above: reported, not a class
        scan.skipped.extend(skipped)
        if not images:
            scan.empty_classes.append(class_dir.relative_to(scan.root).as_posix())
        group = _group_fn(group_regex)
        scan.samples.extend(Sample(p, class_dir.name, split, group(p)) for p in images)
    loose = [p for p in folder.iterdir() if p.is_file() and _visible(p)]
    scan.skipped.extend((p, "not inside a class folder") for p in sorted(loose))


def _skip_loose_files(scan: Scan, root: Path, *, keep: set[Path]) -> None:
    for sub in _subdirs(root):
        if sub not in keep:
            files = walk_files(sub, root=root, links=scan.links)
            scan.skipped.extend((p, f"folder {sub.name}/ is not a split name") for p in files)
    scan.skipped.extend((p, "not inside a split folder") for p in sorted(root.iterdir()) if p.is_file() and _visible(p))


def from_csv(
    csv_path: str | Path,
    *,
    path_col: str = "path",
    label_col: str = "label",
    split_col: str = "split",
    group_col: str | None = None,
) -> Scan:
    """A CSV/TSV with a header: image paths (relative to the CSV's folder), labels, optional split and group.

    Example:
        >>> scan = from_csv("labels.csv")  # path,label[,split]
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no such CSV file")
    header, rows, delimiter_name = _read_table(csv_path)
    for needed in (path_col, label_col, group_col):
        if needed and needed not in header:
            raise DatasetError(
                f"{csv_path}: no column {needed!r} ({delimiter_name}-separated header: {', '.join(header)}); "
                "name the columns path,label or pass path_col/label_col"
            )
    scan = Scan(csv_path.parent, "csv", [])
    columns = (path_col, label_col, split_col if split_col in header else None, group_col)
    listed = [(line, _csv_sample(scan, csv_path, line, row, *columns)) for line, row in enumerate(rows, start=2)]
    _one_row_per_file(scan, csv_path, [(line, sample) for line, sample in listed if sample is not None])
    if not scan.samples and scan.label_conflicts:
        raise DatasetError(scan.label_conflicts[0].describe())
    return _checked(scan, hint="check the path column: paths are relative to the CSV's folder")


def _read_table(csv_path: Path) -> tuple[list[str], list[dict[str, str]], str]:
    """Header, rows as dicts, and the delimiter's name; tab-separated when the suffix or the header says so."""
    text = csv_path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" or (lines and "\t" in lines[0]) else ","
    table = [row for row in csv.reader(lines, delimiter=delimiter) if any(cell.strip() for cell in row)]
    if not table:
        raise DatasetError(f"{csv_path}: the CSV is empty; it needs a header such as path,label")
    header = [h.strip() for h in table[0]]
    rows = [dict(zip(header, (c.strip() for c in row), strict=False)) for row in table[1:]]
    return header, rows, "tab" if delimiter == "\t" else "comma"


def _csv_sample(
    scan: Scan,
    csv_path: Path,
    line: int,
    row: dict[str, str],
    path_col: str,
    label_col: str,
    split_col: str | None,
    group_col: str | None,
) -> Sample | None:
    """The sample one row names, or None (recorded in `scan.skipped`) when its file is missing or not an image."""
    raw, label = row.get(path_col) or "", row.get(label_col) or ""
    if not raw or not label:
        raise DatasetError(f"{csv_path}:{line}: empty {path_col if not raw else label_col!r}; every row needs both")
    path = Path(raw) if Path(raw).is_absolute() else csv_path.parent / raw
    if not path.is_file():
        scan.skipped.append((path, f"listed at {csv_path.name}:{line} but missing"))
        return None
    if not is_image_file(path):
        scan.skipped.append((path, f"unsupported file extension {path.suffix or '(none)'!r}"))
        return None
    split_value = row.get(split_col) if split_col else None
    split = normalise_split(split_value, where=f"{csv_path}:{line}") if split_value else None
    group = row.get(group_col) or None if group_col else None
    return Sample(path, label, split, group)


def _one_row_per_file(scan: Scan, csv_path: Path, listed: list[tuple[int, Sample]]) -> None:
    """Each real file once, at its first row: training on a file twice weights it twice.

    Rows repeating a file with the same label are noted in `scan.repeated_rows`; a file listed under
    two labels is kept out of the samples and recorded as a LabelConflict (there is no right label to pick).
    """
    by_file: dict[str, list[tuple[int, Sample]]] = {}
    for line, sample in listed:  # "a.png", "./a.png" and a link to it are one file
        by_file.setdefault(os.path.realpath(sample.path), []).append((line, sample))
    for rows in by_file.values():
        (first_line, first), *others = rows
        if any(sample.label != first.label for _, sample in others):
            conflict = LabelConflict(csv_path, first.path, tuple((line, s.label) for line, s in rows))
            scan.label_conflicts.append(conflict)
            continue
        scan.samples.append(first)
        for line, sample in others:
            scan.repeated_rows.append((sample.path, f"{csv_path.name}:{line} repeats line {first_line}; used once"))


def from_name_re(root: str | Path, pattern: str, *, group_regex: str | None = None) -> Scan:
    """Labels from file names: the first group of `pattern` searched in each image's name (fastai's from_name_re).

    A pattern containing "/" is searched in the path relative to `root` instead.

    Example:
        >>> scan = from_name_re("pets", r"^(.+)_\\d+\\.jpg$")  # Abyssinian_12.jpg -> Abyssinian
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DatasetError(f"label regex {pattern!r} is not a valid regular expression: {exc}") from exc
    if regex.groups < 1:
        raise DatasetError(f"label regex {pattern!r} needs one capturing group, e.g. '^(.+)_\\d+\\.jpg$'")
    root = _existing_dir(root)

    def label_of(path: Path) -> str | None:
        text = path.relative_to(root).as_posix() if "/" in pattern else path.name
        match = regex.search(text)
        return match.group(1) if match else None

    return _from_labeller(root, "name_regex", label_of, f"regex {pattern!r}", group_regex)


def from_name_func(root: str | Path, func: Callable[[Path], object], *, group_regex: str | None = None) -> Scan:
    """Labels from any function of the path (fastai's from_name_func); None means "skip this file".

    Example:
        >>> scan = from_name_func("pets", lambda p: p.name[0].isupper())  # True = cat
    """
    root = _existing_dir(root)

    def label_of(path: Path) -> str | None:
        value = func(path)
        return None if value is None else str(value)

    return _from_labeller(root, "name_func", label_of, "the label function", group_regex)


def _from_labeller(
    root: Path, kind: str, label_of: Callable[[Path], str | None], what: str, group_regex: str | None
) -> Scan:
    scan = Scan(root, kind, [])
    images, scan.skipped = _partition(walk_files(root, links=scan.links))
    group = _group_fn(group_regex)
    for path in images:
        label = label_of(path)
        if label is None or label == "":
            scan.skipped.append((path, f"{what} gave no label"))
        else:
            scan.samples.append(Sample(path, label, None, group(path)))
    if not scan.samples and images:
        raise DatasetError(f"{images[0]}: {what} matches none of the {len(images)} images; check it against this name")
    if len(scan.samples) < len(images):
        log.warning(
            "%s gave no label for %d of %d images (listed in the audit)",
            what,
            len(images) - len(scan.samples),
            len(images),
        )
    return _checked(scan, hint="point at a folder of images")


def _group_fn(group_regex: str | None) -> Callable[[Path], str | None]:
    """Group ids from file names, e.g. r'^(patient\\d+)_' keeps each patient's images together."""
    if not group_regex:
        return lambda path: None
    regex = re.compile(group_regex)
    if regex.groups < 1:
        raise DatasetError(f"group regex {group_regex!r} needs one capturing group")

    def group(path: Path) -> str | None:
        match = regex.search(path.name)
        return match.group(1) if match else None

    return group


def _existing_dir(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; give a folder of class folders or a .csv/.tsv file")
    return root


def _checked(scan: Scan, *, hint: str) -> Scan:
    if not scan.samples:
        raise DatasetError(f"{scan.root}: no labelled images found; {hint}")
    return scan


def scan_source(
    source: str | Path,
    *,
    label_regex: str | None = None,
    csv_path_col: str = "path",
    csv_label_col: str = "label",
    csv_split_col: str = "split",
    group_col: str | None = None,
    group_regex: str | None = None,
) -> Scan:
    """Pick the source from what `source` is: a .csv/.tsv file, a folder with a label regex, or a folder."""
    path = Path(source).expanduser()
    if path.suffix.lower() in {".csv", ".tsv"}:
        return from_csv(
            path, path_col=csv_path_col, label_col=csv_label_col, split_col=csv_split_col, group_col=group_col
        )
    if group_col:
        raise DatasetError("`group_col` applies to CSV sources; for folders use `group_regex`")
    if label_regex:
        return from_name_re(path, label_regex, group_regex=group_regex)
    return from_folder(path, group_regex=group_regex)
