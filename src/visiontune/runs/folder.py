"""`RunFolder`: the only code that knows a run folder's files. Create, lock, claim, write, read.

    RUN/
      config.yaml         the resolved RunConfig (everything that ran)
      run.json            data manifest hash, counts, monitor, versions, hardware; `format` marks it ours
      classes.json        the class names, in index order
      splits.csv          path, label, split of every image
      metrics.csv/.jsonl  one row per epoch (fine-tuning); heads.csv one row per head (features)
      history.png, lr_find.png
      checkpoints/        last.safetensors, best.safetensors
      results.json        the final metrics, calibration, best epoch or head, elapsed time
      members/2/ ...      an ensemble's further members: each its own checkpoints/, metrics and run.json
      model/              the bundle
      eval/               `visiontune evaluate`'s outputs; trial.json for a tune trial

`--overwrite` removes only the entries above, and only from a folder that is provably a run (its
run.json says so) with nothing else in it: a project folder that merely holds a config.yaml, or a
run folder where someone keeps their notes, is refused with a one-line message, never emptied.
Every file is written atomically. Under several processes only the main one writes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from visiontune.config import RunConfig, load_yaml, save_yaml
from visiontune.data.sources import relative_posix
from visiontune.errors import VisiontuneError
from visiontune.io import atomic_write_json, atomic_write_text
from visiontune.runs.lock import LOCK_FILE, check_unlocked, run_lock

RUN_FORMAT = "visiontune.run/1"
CONFIG, INFO, RESULTS, CLASSES, SPLITS = "config.yaml", "run.json", "results.json", "classes.json", "splits.csv"
METRICS_CSV, METRICS_JSONL, HEADS = "metrics.csv", "metrics.jsonl", "heads.csv"
HISTORY, LR_FIND, TRIAL = "history.png", "lr_find.png", "trial.json"
CHECKPOINTS, BUNDLE, EVAL, TENSORBOARD, MEMBERS = "checkpoints", "model", "eval", "tensorboard", "members"
MLFLOW_ARTIFACTS = "mlruns"  # MLflow's local artifact store: copies of run files, not runs
WRITTEN = {CONFIG, INFO, RESULTS, CLASSES, SPLITS, METRICS_CSV, METRICS_JSONL, HEADS, HISTORY, LR_FIND, TRIAL,
           CHECKPOINTS, BUNDLE, EVAL, TENSORBOARD, MEMBERS, LOCK_FILE}  # fmt: skip
# epoch-row names of earlier releases, read as this release's
LEGACY_COLUMNS = {"accuracy": "valid_accuracy", "balanced_accuracy": "valid_balanced_accuracy",
                  "error_rate": "valid_error_rate"}  # fmt: skip


class RunExistsError(VisiontuneError):
    """The output folder already holds a run, or files that are not a run's."""


class RunFolder:
    """One run folder. Paths are properties; `write_*` and `read_*`-style methods do the I/O.

    Example:
        >>> run = RunFolder("runs/demo")  # doctest: +SKIP
        >>> run.config().model.backbone, run.results()["metrics"]["test_accuracy"]  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- layout ---------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """The path of one of the names above (e.g. `run.file(HISTORY)`)."""
        return self.path / name

    @property
    def bundle_dir(self) -> Path:
        return self.path / BUNDLE

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, which: str) -> Path:
        """checkpoints/last.safetensors or best.safetensors."""
        return self.checkpoints_dir / f"{which}.safetensors"

    def member(self, index: int) -> RunFolder:
        """Where an ensemble's member `index` (0-based) trains: the run folder itself for the first,
        members/<index + 1>/ for the others (their files are written like the run's)."""
        return self if index == 0 else RunFolder(self.path / MEMBERS / str(index + 1))

    # ---- create, lock, claim --------------------------------------------------------------------
    def check_target(self, *, overwrite: bool | None = None) -> None:
        """Refuse, before anything is created or locked, a path that can't take a new run.

        An existing file, a folder another process is writing, and (when `overwrite` is given: a new
        run, not a resume) a folder that `claim` would refuse.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunExistsError(f"{self.path} is a file, not a folder; give --out a folder path")
        if self.path.is_dir():
            check_unlocked(self.path)
            if overwrite is None:
                return
            try:
                self.claim(overwrite=overwrite, dry_run=True)
            except (RunExistsError, OSError):
                # another `--overwrite` may have taken the lock and be clearing the folder since the check
                # above: what its clearing left is no reason to give, the lock is
                check_unlocked(self.path)
                raise

    @contextmanager
    def lock(self, *, enabled: bool = True) -> Iterator[None]:
        """Hold the folder's lock while the body runs (only the process that writes)."""
        with run_lock(self.path, enabled=enabled):
            yield

    def claim(self, *, overwrite: bool, dry_run: bool = False) -> None:
        """Make the folder ready for a new run, under its lock: refuse, or clear what an earlier run wrote.

        An empty (or missing) folder is used as it is. A finished or stopped run is replaced only with
        `overwrite`, and only when it is provably ours with nothing else in it. `dry_run` only checks.
        """
        entries = [e for e in self._entries() if e != LOCK_FILE]
        if not entries:
            return
        foreign = sorted(e for e in entries if e not in WRITTEN and not _temporary(e))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise RunExistsError(
                f"{self.path} holds files visiontune did not write ({shown});"
                " choose another --out (nothing was deleted)"
            )
        if not overwrite:
            raise RunExistsError(
                f"{self.path} already holds a run: continue it with --resume {self.path}, replace it with"
                " --overwrite, or choose another --out"
            )
        if not self._provably_ours():
            raise RunExistsError(
                f"{self.path}: its {INFO} is missing or was not written by visiontune, so --overwrite won't"
                " delete it; remove the folder yourself or choose another --out"
            )
        if not dry_run:
            self.clear()

    def clear(self) -> None:
        """Remove what a run wrote (never the lock the caller holds, never anything else)."""
        for entry in self._entries():
            if entry == LOCK_FILE or not (entry in WRITTEN or _temporary(entry)):
                continue
            target = self.path / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

    def _entries(self) -> list[str]:
        return sorted(os.listdir(self.path)) if self.path.is_dir() else []

    def _provably_ours(self) -> bool:
        info = self.info()
        return info.get("format") == RUN_FORMAT or {"data_manifest_sha256", "versions"} <= set(info)

    # ---- write ----------------------------------------------------------------------------------
    def write_config(self, config: RunConfig) -> None:
        save_yaml(config.to_dict(), self.file(CONFIG))

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write_json(self.file(INFO), {"format": RUN_FORMAT, **info})

    def update_info(self, fields: dict[str, Any]) -> None:
        """Add fields to run.json (what a fitter learns once it has started)."""
        self.write_info({**self.info(), **fields})

    def write_classes(self, classes: Sequence[str]) -> None:
        atomic_write_json(self.file(CLASSES), list(classes))

    def write_splits(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """(path, label, split) of every image."""
        atomic_write_text(self.file(SPLITS), csv_text([("path", "label", "split"), *rows]))

    def write_epochs(self, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
        """metrics.csv and metrics.jsonl, one row per epoch so far."""
        body = [fields, *([_fmt(row.get(k)) for k in fields] for row in rows)]
        atomic_write_text(self.file(METRICS_CSV), csv_text(body))
        atomic_write_text(self.file(METRICS_JSONL), "".join(json.dumps(r) + "\n" for r in rows))

    def write_heads(self, rows: Sequence[dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        atomic_write_text(self.file(HEADS), csv_text([columns, *([r.get(c, "") for c in columns] for r in rows)]))

    def write_results(self, results: dict[str, Any]) -> None:
        atomic_write_json(self.file(RESULTS), results)

    def write_trial(self, trial: dict[str, Any]) -> None:
        atomic_write_json(self.file(TRIAL), trial)

    # ---- read -----------------------------------------------------------------------------------
    def config(self) -> RunConfig:
        """The resolved config the run was started with (older runs' layouts are read too)."""
        return RunConfig.from_dict(load_yaml(self.file(CONFIG)))

    def info(self) -> dict[str, Any]:
        return _json(self.file(INFO))

    def results(self) -> dict[str, Any]:
        """results.json; {} while the run has not finished."""
        return _json(self.file(RESULTS))

    def eval_metrics(self) -> dict[str, Any]:
        """eval/metrics.json, written by `visiontune evaluate RUN`; {} before that."""
        return _json(self.eval_dir / "metrics.json")

    def trial(self) -> dict[str, Any]:
        return _json(self.file(TRIAL))

    def classes(self) -> list[str]:
        return list(json.loads(self.file(CLASSES).read_text()))

    def epochs(self) -> list[dict[str, Any]]:
        """metrics.csv as rows of numbers (epoch as int, phase as text), names as this release writes them."""
        if not self.file(METRICS_CSV).is_file():
            return []
        with open(self.file(METRICS_CSV), newline="") as handle:
            return [{LEGACY_COLUMNS.get(k, k): _number(k, v) for k, v in row.items()} for row in csv.DictReader(handle)]

    def heads(self) -> list[dict[str, str]]:
        if not self.file(HEADS).is_file():
            return []
        with open(self.file(HEADS), newline="") as handle:
            return list(csv.DictReader(handle))

    def splits(self) -> list[tuple[str, str, str]]:
        """(path, label, split) rows as written: paths as the run saw them."""
        with open(self.file(SPLITS), newline="") as handle:
            return [(row["path"], row["label"], row["split"]) for row in csv.DictReader(handle)]

    def relative_splits(self, data_root: str | Path | None) -> list[tuple[str, str, str]] | None:
        """(path relative to `data_root`, label, split) per image; None when the run has no splits.csv.

        Relative paths find a run's split again in a copy of its data folder somewhere else.
        """
        if not self.file(SPLITS).is_file():
            return None
        return [(relative_posix(path, data_root), label, split) for path, label, split in self.splits()]

    def split_files(
        self, split: str, *, data_root: str | Path | None, data: Path | None = None
    ) -> list[tuple[Path | None, str]] | None:
        """(file or None when it is gone, label) of each image of `split`: under `data` in place of the
        recorded `data_root` when given, else where training read it. None without a splits.csv."""
        if not self.file(SPLITS).is_file():
            return None
        found = []
        for path, label, name in self.splits():
            if name == split:
                candidate = data / relative_posix(path, data_root) if data is not None else Path(path)
                found.append((candidate if candidate.is_file() else None, label))
        return found


def find_runs(root: str | Path) -> list[RunFolder]:
    """Every run folder under `root` (or `root` itself), in folder order; a run's model/ and eval/ are not walked,
    nor hidden folders or MLflow's local artifact store (`--log mlflow` keeps copies of run files there)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != MLFLOW_ARTIFACTS)
        if CONFIG in files:
            found.append(RunFolder(folder))
            dirs[:] = []
    return found


def find_run(given: Path, bundle_dir: Path) -> RunFolder | None:
    """The run folder behind a bundle: the folder given, the bundle's parent, or None for a lone bundle."""
    for candidate in (given, bundle_dir.parent):
        run = RunFolder(candidate)
        if run.file(CONFIG).is_file() and (run.bundle_dir / "bundle.json").is_file():
            return run
    return None


def _temporary(name: str) -> bool:
    """Atomic writers' staging names (`.metrics.csv.x1y2.tmp`, `.model.abc`): ours, left by a kill."""
    return name.startswith(".") and any(name.startswith(f".{entry}.") for entry in WRITTEN)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def csv_text(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as CSV text, for the atomic writers (run files, misclassified.csv, trials.csv)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _number(key: str, value: str | None) -> Any:
    if key == "phase" or value in (None, ""):
        return value or None
    return int(value) if key == "epoch" else float(value)
