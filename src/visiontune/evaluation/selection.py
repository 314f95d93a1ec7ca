"""Which images an evaluation scores: never the ones the model was trained on.

DATA is either the run's own data, recognised by the relative paths its splits.csv recorded
(a copy of the data folder elsewhere still matches), or any other labelled folder or CSV.

- The run's own data: its test split as the run assigned it (valid when it had no test split),
  or `--split valid|test`. The training split is refused: those scores would flatter the model.
- Other data: its test split when it has one (a `test/` folder or CSV rows), otherwise every image;
  `--split` picks one of its own splits.

Either way the classes must be the bundle's, each with at least one image.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiontune.config import DataConfig, from_dict
from visiontune.data.dataset import LabelledImages, load_data
from visiontune.data.sources import Sample, relative_posix
from visiontune.errors import ConfigError, DatasetError
from visiontune.runs.folder import RunFolder

log = logging.getLogger(__name__)

SPLIT_CHOICES = ("train", "valid", "test", "all")


@dataclass
class Selection:
    """The images to score (`data.samples`, in the bundle's class order) and how they were chosen."""

    data: LabelledImages
    split: str
    own_data: bool
    notes: list[str] = field(default_factory=list)


def select_images(
    source: str | Path,
    *,
    classes: list[str],
    training: dict[str, Any],
    run: RunFolder | None,
    split: str | None = None,
    label_regex: str | None = None,
    progress: Callable[[int], None] | None = None,
    corrections: str | None = None,
) -> Selection:
    """Load DATA as the run read its data, and pick the images to evaluate (see the module docstring).

    Example:
        >>> run = Path("runs/demo")  # doctest: +SKIP
        >>> chosen = select_images("demo", classes=meta.classes, training=meta.training, run=run)  # doctest: +SKIP
        >>> chosen.split, len(chosen.data.samples)  # doctest: +SKIP
    """
    config = _data_config(source, training, label_regex)
    if corrections is not None:
        config = dataclasses.replace(config, corrections=corrections)
    data = load_data(source, config, check=False, progress=progress)
    rows = run.relative_splits(training.get("data_root")) if run is not None else None
    recorded = None if rows is None else {relative: split for relative, _, split in rows}  # relative path: split
    keys = _keys(data, training.get("data_root"))
    if recorded is not None and any(key in recorded for key in keys.values()):
        selection = _from_run(data, keys, recorded, split, training)
    else:
        _refuse_unsplit_training_data(data, training, run)
        selection = _from_other(data, split)
    check_classes(selection.data, classes)
    selection.data = dataclasses.replace(selection.data, classes=list(classes))
    return selection


def _data_config(source: str | Path, training: dict[str, Any], label_regex: str | None) -> DataConfig:
    """The run's way of reading labels (regex, CSV columns), with no split carved: splits come from the run or DATA."""
    recorded = dict((training.get("config") or {}).get("data") or {})
    try:
        base = from_dict(DataConfig, recorded) if recorded else DataConfig()
    except (TypeError, ConfigError):  # a config from another version: read DATA the default way
        base = DataConfig()
    regex = label_regex if label_regex is not None else base.label_regex
    return dataclasses.replace(base, source=str(source), label_regex=regex, valid_pct=0.0, test_pct=0.0, sample=1.0)


def _keys(data: LabelledImages, data_root: str | None) -> dict[Path, str]:
    """Each sample's path relative to the run's data root, also when DATA is a sub-folder of it (photos/test)."""
    prefix = ""
    if data_root and Path(data_root).is_dir():
        trained, given = Path(data_root).resolve(), data.root.resolve()
        if given != trained and given.is_relative_to(trained):
            prefix = given.relative_to(trained).as_posix() + "/"
    return {s.path: prefix + relative_posix(s.path, data.root) for s in data.samples}


def _from_run(
    data: LabelledImages, keys: dict[Path, str], recorded: dict[str, str], split: str | None, training: dict[str, Any]
) -> Selection:
    present = set(recorded.values())
    chosen_split = split or ("test" if "test" in present else "valid")
    if chosen_split in ("train", "all"):
        raise ConfigError(
            f"--split {chosen_split} would score images the model was trained on ({data.root} is its training data); "
            "use --split valid or test"
        )
    chosen = [
        dataclasses.replace(s, split=chosen_split) for s in data.samples if recorded.get(keys[s.path]) == chosen_split
    ]
    if not chosen:
        raise DatasetError(
            f"{data.root}: none of the run's {chosen_split} images are here; "
            f"the run's splits: {', '.join(sorted(present))}"
        )
    notes = [f"the run's own data: its {chosen_split} split as recorded in splits.csv ({len(chosen)} images)"]
    unlisted = sum(1 for key in keys.values() if key not in recorded)
    missing = sum(1 for key, name in recorded.items() if name == chosen_split) - len(chosen)
    if unlisted or missing:
        notes.append(_changed(data.root, unlisted, missing, chosen_split))
        log.warning(notes[-1])
    elif training.get("data_manifest_sha256") not in (None, _manifest(data, keys, recorded)):
        notes.append(f"{data.root}: images or labels changed since training (the data manifest hash differs)")
        log.warning(notes[-1])
    return Selection(dataclasses.replace(data, samples=chosen), chosen_split, True, notes)


def _changed(root: Path, unlisted: int, missing: int, split: str) -> str:
    parts = []
    if unlisted:
        parts.append(
            f"{unlisted} images are not in the run's splits.csv (added later, or left out by --sample) "
            "and are not scored"
        )
    if missing:
        parts.append(f"{missing} of the run's {split} images are missing")
    return f"{root}: the data changed since training: " + "; ".join(parts)


def _manifest(data: LabelledImages, keys: dict[Path, str], recorded: dict[str, str]) -> str:
    """The data manifest hash training recorded, recomputed with the run's split assignment."""
    assigned = [dataclasses.replace(s, split=recorded[keys[s.path]]) for s in data.samples]
    return dataclasses.replace(data, samples=assigned).manifest_hash()


def _refuse_unsplit_training_data(data: LabelledImages, training: dict[str, Any], run: RunFolder | None) -> None:
    """DATA is where the model was trained, but no splits.csv says which images were held out."""
    root = training.get("data_root")
    if root and Path(root).is_dir() and Path(root).resolve() == data.root.resolve():
        where = f"{run.path} has no splits.csv" if run is not None else "the bundle is not inside its run folder"
        raise DatasetError(
            f"{data.root} is the data this model was trained on, but {where} to tell the held-out images apart; "
            "give the run folder as MODEL"
        )


def _from_other(data: LabelledImages, split: str | None) -> Selection:
    present = sorted({s.split or "train" for s in data.samples})
    chosen_split = split or ("test" if "test" in present else "all")
    if chosen_split == "all":
        chosen = list(data.samples)
    else:
        chosen = [s for s in data.samples if s.split == chosen_split]
        if not chosen:
            raise DatasetError(
                f"{data.root}: no {chosen_split} split here (its images are in: {', '.join(present)}); "
                "leave out --split to score every image"
            )
    chosen = [dataclasses.replace(s, split=chosen_split) for s in chosen]
    what = "every image" if chosen_split == "all" else f"its {chosen_split} split"
    notes = [f"data the model was not trained on: {what} ({len(chosen)} images)"]
    return Selection(dataclasses.replace(data, samples=chosen), chosen_split, False, notes)


def check_classes(data: LabelledImages, classes: list[str]) -> None:
    """DatasetError naming the classes DATA lacks or the model doesn't know, so the user sees what to fix."""
    found = {s.label for s in data.samples}
    extra = sorted(found - set(classes))
    missing = [c for c in classes if c not in found]
    if not extra and not missing:
        return
    parts = []
    if missing:
        parts.append(f"no images of {_names(missing)}")
    if extra:
        parts.append(f"classes the model doesn't know: {_names(extra)}")
    raise DatasetError(
        f"{data.root}: classes don't match the model's ({'; '.join(parts)}); "
        f"evaluate on images of exactly its {len(classes)} classes: {_names(classes)}"
    )


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def sample_path(sample: Sample) -> str:
    """The absolute path of a sample, for misclassified.csv: the user opens it from anywhere."""
    return str(Path(sample.path).absolute())
