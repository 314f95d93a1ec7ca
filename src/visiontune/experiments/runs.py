"""Run folders as rows: what `visiontune runs` lists and sorts.

A run folder is any folder holding a `config.yaml` written by `train` (fine-tuning, scratch or
features) or by a `tune` trial. Everything shown is read from the files the run left behind, so a
run that was stopped, pruned or copied from another machine still gets a row; a folder whose files
can't be read is skipped with a warning rather than hiding every other run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from visiontune.config import check_choice
from visiontune.errors import ConfigError

log = logging.getLogger(__name__)

TRIAL_FILE = "trial.json"  # written into a tune trial's run folder (see experiments.tune)
SORT_KEYS = ("date", "name", "data", "method", "backbone", "size", "epochs", "valid", "test", "time", "status")


@dataclass(frozen=True)
class RunSummary:
    """One run folder, as the `runs` table shows it."""

    path: Path
    name: str  # the folder relative to the listed root
    date: datetime | None
    data: str
    method: str
    backbone: str
    image_size: int | None
    freeze_epochs: int | None  # None: a features run (no epochs)
    epochs: int | None
    monitor: str
    valid: float | None  # the monitored validation metric at the best epoch (or of the kept head)
    test: float | None  # test accuracy, from training or from `visiontune evaluate`
    time_s: float | None
    status: str  # done, pruned, running or stopped
    trial: int | None = None

    @property
    def epochs_label(self) -> str:
        if self.epochs is None:
            return "-"
        return f"{self.freeze_epochs}+{self.epochs}" if self.freeze_epochs else str(self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "date": self.date.isoformat(timespec="seconds") if self.date else None,
            "data": self.data,
            "method": self.method,
            "backbone": self.backbone,
            "image_size": self.image_size,
            "epochs": self.epochs_label,
            "monitor": self.monitor,
            "valid": self.valid,
            "test": self.test,
            "time_s": self.time_s,
            "status": self.status,
            "trial": self.trial,
        }


def find_runs(root: str | Path) -> list[RunSummary]:
    """Every run folder under `root` (or `root` itself), in folder order.

    Example:
        >>> [r.name for r in find_runs("runs")]  # doctest: +SKIP
        ['demo', 'tune-demo/trial-0000', 'tune-demo/trial-0001']
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder; give the folder that holds your runs (default: runs)")
    runs = []
    for folder in _run_folders(root):
        try:
            runs.append(read_run(folder, root=root))
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
            log.warning("%s: skipped, its run files can't be read (%s)", folder, exc)
    return runs


def _run_folders(root: Path) -> list[Path]:
    """Folders with a config.yaml; the walk does not descend into a run (its model/, eval/ are not runs)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "config.yaml" in files:
            found.append(Path(folder))
            dirs[:] = []
    return found


def read_run(path: str | Path, *, root: str | Path | None = None) -> RunSummary:
    """The summary of one run folder from its config.yaml, run.json, results.json and metrics.csv."""
    path = Path(path)
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    model, train, data = config.get("model") or {}, config.get("train") or {}, config.get("data") or {}
    info = _json(path / "run.json")
    results = _json(path / "results.json")
    trial = _json(path / TRIAL_FILE)
    rows = read_metrics(path)
    method = str(train.get("method", "finetune"))
    monitor = str(info.get("monitor") or results.get("monitor") or "accuracy")
    features = method == "features"
    return RunSummary(
        path=path,
        name=path.relative_to(root).as_posix() if root is not None and path != Path(root) else path.name,
        date=_date(path, info),
        data=_data_label(data),
        method=method,
        backbone=str(model.get("name", "?")),
        image_size=model.get("image_size"),
        freeze_epochs=None if features else int(train.get("freeze_epochs", 0)),
        epochs=None if features else int(train.get("epochs", 0)),
        monitor=monitor,
        valid=_valid(results, rows, monitor),
        test=_test(path, results),
        time_s=results.get("elapsed_s") if results else _sum(rows, "time_s"),
        status=_status(path, results, trial),
        trial=trial.get("number"),
    )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv as rows of floats (epoch as int, phase as text); [] for a features run."""
    file = path / "metrics.csv"
    if not file.is_file():
        return []
    with open(file, newline="") as handle:
        return [{k: _number(k, v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(key: str, value: str | None) -> Any:
    if key == "phase" or value in (None, ""):
        return value or None
    return int(value) if key == "epoch" else float(value)


def metric_key(monitor: str) -> str:
    """The results.json key of a monitor: accuracy -> valid_accuracy, valid_loss stays."""
    return monitor if monitor.startswith("valid_") else f"valid_{monitor}"


def _valid(results: dict[str, Any], rows: list[dict[str, Any]], monitor: str) -> float | None:
    metrics = results.get("metrics") or {}
    if metric_key(monitor) in metrics:
        return float(metrics[metric_key(monitor)])
    values = [float(r[monitor]) for r in rows if r.get(monitor) is not None and not math.isnan(float(r[monitor]))]
    if not values:
        return None
    return min(values) if monitor.endswith("loss") else max(values)


def _test(path: Path, results: dict[str, Any]) -> float | None:
    """Test accuracy from training's results, else from `visiontune evaluate`'s eval/metrics.json."""
    metrics = results.get("metrics") or {}
    if "test_accuracy" in metrics:
        return float(metrics["test_accuracy"])
    evaluated = _json(path / "eval" / "metrics.json")
    return float(evaluated["accuracy"]) if "accuracy" in evaluated else None


def _status(path: Path, results: dict[str, Any], trial: dict[str, Any]) -> str:
    if results:
        return "done"
    if trial.get("state") == "pruned":
        return "pruned"
    return "running" if _locked(path) else "stopped"


def _locked(path: Path) -> bool:
    """Whether a live process holds the run's lock (training/lock.py): it is still being written."""
    from visiontune.training.lock import RunLockedError, check_unlocked

    try:
        check_unlocked(path)
    except RunLockedError:
        return True
    return False


def _date(path: Path, info: dict[str, Any]) -> datetime | None:
    if info.get("started"):
        try:
            return datetime.fromisoformat(str(info["started"]))
        except ValueError:
            pass
    return datetime.fromtimestamp((path / "config.yaml").stat().st_mtime)


def _data_label(data: dict[str, Any]) -> str:
    name = Path(str(data.get("source") or "?")).name or str(data.get("source"))
    sample = float(data.get("sample", 1.0) or 1.0)
    return f"{name} ({sample:g})" if sample < 1.0 else name


def _sum(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return sum(values) if values else None


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def sort_runs(runs: list[RunSummary], key: str = "date", *, reverse: bool = False) -> list[RunSummary]:
    """Runs in the order `key` gives: metrics best first, time fastest first, dates oldest first.

    Runs without a value for `key` (a stopped run has no test score) go last either way.
    """
    check_choice("sort", key, SORT_KEYS)

    def value(run: RunSummary) -> Any:
        if key == "valid":
            if run.valid is None:
                return None
            return run.valid if run.monitor.endswith("loss") else -run.valid  # best first
        if key == "test":
            return None if run.test is None else -run.test
        return {
            "date": run.date,
            "name": run.name,
            "data": run.data,
            "method": run.method,
            "backbone": run.backbone,
            "size": run.image_size,
            "epochs": None if run.epochs is None else (run.freeze_epochs or 0) + run.epochs,
            "time": run.time_s,
            "status": run.status,
        }[key]

    present = sorted((r for r in runs if value(r) is not None), key=value, reverse=reverse)
    return present + [r for r in runs if value(r) is None]
