"""corrections.csv: label decisions about images, kept beside the data and applied whenever it is read.

A person reviewing suspects (`visiontune clean --review`) or `clean --apply-suggestions` records a
decision per image; the images themselves are never moved, edited or deleted. `load_data` applies
the file it finds at `<data root>/corrections.csv` (or the one `DataConfig.corrections` names), so
train, inspect, evaluate and clean all see the corrected labels, and the data manifest hash (which
covers labels) changes with them.

One row per decision, appended as it is made; the newest row for a path wins, so a changed mind is
another row and the file is a history. Columns:

| column | meaning                                                                  |
|--------|--------------------------------------------------------------------------|
| path   | the image, relative to the data root (POSIX), as runs and manifests name it |
| action | keep, relabel, exclude, or no_class (an image of none of the classes: left out) |
| label  | the new label (relabel only)                                             |
| given  | the label the image had when the decision was made                       |
| by     | `review`, or `auto (min score S)` for `--apply-suggestions`              |
| score  | the suspect's score when decided (empty when not a suspect)              |
| when   | UTC time of the decision, ISO 8601                                       |

Every write rewrites the whole file under a temporary name and renames it (io.atomic_write), under a
lock, so a crash or a full disk never leaves half a row and two writers never interleave.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visiontune.data.sources import Sample, Scan, relative_posix
from visiontune.errors import DatasetError
from visiontune.io import atomic_write_text

log = logging.getLogger(__name__)

FILE_NAME = "corrections.csv"
COLUMNS = ("path", "action", "label", "given", "by", "score", "when")
ACTIONS = ("keep", "relabel", "exclude", "no_class")
OFF = "none"  # DataConfig.corrections value that turns applying off
_LOCK = threading.Lock()  # one writer at a time in this process (the review server's request threads)


@dataclass(frozen=True)
class Correction:
    """One decision about one image (see the module docstring for the fields)."""

    path: str
    action: str
    label: str = ""
    given: str = ""
    by: str = "review"
    score: float | None = None
    when: str = ""

    def row(self) -> dict[str, str]:
        score = "" if self.score is None else f"{self.score:.6f}"
        return {**{k: str(getattr(self, k)) for k in COLUMNS if k != "score"}, "score": score}


@dataclass
class Applied:
    """What applying a corrections file changed: the counts the commands print and the run records."""

    file: str
    sha256: str
    relabelled: list[Correction] = field(default_factory=list)
    excluded: list[Correction] = field(default_factory=list)  # exclude and no_class
    kept: int = 0
    missing: int = 0  # decisions about files that are no longer in the data

    @property
    def applied(self) -> int:
        return len(self.relabelled) + len(self.excluded)

    def describe(self) -> str:
        """ "applied 37 corrections: 31 relabelled, 6 excluded" (with what was not applied, when anything)."""
        text = f"applied {self.applied} corrections from {self.file}: {len(self.relabelled)} relabelled, "
        text += f"{len(self.excluded)} excluded"
        notes = [f"{self.kept} kept as labelled"] if self.kept else []
        notes += [f"{self.missing} name files no longer in the data"] if self.missing else []
        return text + (f" ({'; '.join(notes)})" if notes else "")

    def to_dict(self) -> dict[str, Any]:
        """For run.json: the file, its hash, the counts and each applied decision."""
        rows = [c.row() for c in (*self.relabelled, *self.excluded)]
        counts = {"relabelled": len(self.relabelled), "excluded": len(self.excluded), "kept": self.kept}
        return {"file": self.file, "sha256": self.sha256, **counts, "missing": self.missing, "applied": rows}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_path(root: str | Path) -> Path:
    """Where a data set's corrections live: `<data root>/corrections.csv`."""
    return Path(root) / FILE_NAME


def read_corrections(path: str | Path) -> list[Correction]:
    """Every row of a corrections file, in file order; a malformed row is a DatasetError naming its line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: can't read the corrections file ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("path", "action") if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"{path}: no {missing[0]!r} column; a corrections file starts with {','.join(COLUMNS)}")
    return [_parse(row, path, reader.line_num) for row in reader]


def _parse(row: dict[str, str | None], path: Path, line: int) -> Correction:
    def get(key: str) -> str:
        return (row.get(key) or "").strip()

    action = get("action")
    if action not in ACTIONS:
        raise DatasetError(f"{path} line {line}: unknown action {action!r}; use one of {', '.join(ACTIONS)}")
    if action == "relabel" and not get("label"):
        raise DatasetError(f"{path} line {line}: a relabel needs the new label in the `label` column")
    try:
        score = float(get("score")) if get("score") else None
    except ValueError as exc:
        raise DatasetError(f"{path} line {line}: score {get('score')!r} is not a number") from exc
    return Correction(get("path"), action, get("label"), get("given"), get("by") or "review", score, get("when"))


def latest(corrections: Iterable[Correction]) -> dict[str, Correction]:
    """{path: its newest decision}: later rows override earlier ones."""
    return {c.path: c for c in corrections}


def append_corrections(path: str | Path, new: Sequence[Correction]) -> None:
    """Add rows to a corrections file (created with its header when missing), atomically.

    Rows without a time get the current one. Earlier rows are kept as they were.
    """
    path = Path(path)
    with _LOCK:
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        if not old:
            writer.writeheader()
        elif not old.endswith("\n"):
            old += "\n"
        for correction in new:
            writer.writerow((correction if correction.when else dataclasses.replace(correction, when=now())).row())
        atomic_write_text(path, old + buffer.getvalue())


def resolve_path(setting: str | None, root: Path) -> Path | None:
    """The corrections file to apply: None (off or absent), the one named (must exist), or the default one."""
    if setting is not None and setting.strip().lower() == OFF:
        return None
    if setting:
        path = Path(setting)
        if not path.is_file():
            raise DatasetError(f"{path}: no such corrections file; check --corrections (or pass --corrections none)")
        return path
    found = default_path(root)
    return found if found.is_file() else None


def apply_corrections(scan: Scan, setting: str | None = None) -> tuple[Scan, Applied | None]:
    """`scan` with the decisions of its corrections file applied: relabelled samples, excluded ones left out.

    The corrections file itself is not reported as a stray file of the data folder.
    """
    path = resolve_path(setting, scan.root)
    if path is None:
        return scan, None
    decisions = latest(read_corrections(path))
    _check_labels(path, decisions.values(), scan.classes)
    applied = Applied(str(path), hashlib.sha256(path.read_bytes()).hexdigest())
    samples = []
    seen = set()
    for sample in scan.samples:
        key = relative_posix(sample.path, scan.root)
        decision = decisions.get(key)
        seen.add(key)
        samples.append(_decide(sample, decision, applied) if decision else sample)
    applied.missing = len(set(decisions) - seen)
    kept = [s for s in samples if s is not None]
    skipped = [(p, why) for p, why in scan.skipped if Path(p).resolve() != path.resolve()]
    return dataclasses.replace(scan, samples=kept, skipped=skipped), applied


def _decide(sample: Sample, decision: Correction, applied: Applied) -> Sample | None:
    if decision.action in ("exclude", "no_class"):
        applied.excluded.append(decision)
        return None
    if decision.action == "relabel" and decision.label != sample.label:
        applied.relabelled.append(decision)
        return dataclasses.replace(sample, label=decision.label)
    applied.kept += 1
    return sample


def _check_labels(path: Path, decisions: Iterable[Correction], classes: Sequence[str]) -> None:
    """Refuse a relabel to a class the data does not have (a typo would silently create a class)."""
    unknown = Counter(c.label for c in decisions if c.action == "relabel" and c.label not in set(classes))
    if unknown:
        label, n = unknown.most_common(1)[0]
        raise DatasetError(
            f"{path}: {n} row(s) relabel to {label!r}, which is not a class of this data "
            f"(classes: {', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''}); "
            "fix the label or delete those rows"
        )
