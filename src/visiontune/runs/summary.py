"""Run folders as rows: what `visiontune runs` lists and sorts.

A run folder is any folder holding a `config.yaml` written by `train` (fine-tuning, scratch or
features) or by a `tune` trial. Everything shown is read through `RunFolder` from the files the
run left behind, so a run that was stopped, pruned or copied from another machine still gets a
row; a folder whose files can't be read is skipped with a warning rather than hiding every other run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from visiontune.config import RunConfig, check_choice, get_monitor
from visiontune.errors import ConfigError
from visiontune.runs.folder import CONFIG, RunFolder
from visiontune.runs.folder import find_runs as find_folders
from visiontune.runs.lock import RunLockedError, check_unlocked

log = logging.getLogger(__name__)

SORT_KEYS = ("date", "name", "data", "method", "backbone", "size", "epochs", "valid", "test", "time", "status")


@dataclass(frozen=True)
class RunSummary:
    """One run folder, as the `runs` table shows it."""

    name: str  # the folder relative to the listed root
    path: Path
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
        """The `--json` row: every field, the path as text, the date in ISO form and epochs as the table shows them."""
        row = dataclasses.asdict(self)
        del row["freeze_epochs"]
        date = self.date.isoformat(timespec="seconds") if self.date else None
        return {**row, "path": str(self.path), "date": date, "epochs": self.epochs_label}


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
    for folder in find_folders(root):
        try:
            runs.append(read_run(folder.path, root=root))
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError, ConfigError) as exc:
            log.warning("%s: skipped, its run files can't be read (%s)", folder.path, exc)
    return runs


def read_run(path: str | Path, *, root: str | Path | None = None) -> RunSummary:
    """The summary of one run folder from its config, run.json, results.json and epoch rows."""
    run = RunFolder(path)
    config, info, results, trial = run.config(), run.info(), run.results(), run.trial()
    rows = run.epochs()
    features = config.train.method == "features"
    monitor = str(info.get("monitor") or results.get("monitor") or "valid_accuracy")
    return RunSummary(
        path=run.path,
        name=run.path.relative_to(root).as_posix() if root is not None and run.path != Path(root) else run.path.name,
        date=_date(run, info),
        data=_data_label(config.data.source, config.data.sample),
        method=config.train.method,
        backbone=_backbone(config),
        image_size=config.model.image_size,
        freeze_epochs=None if features else config.finetune.freeze_epochs,
        epochs=None if features else config.finetune.epochs,
        monitor=get_monitor(monitor).name,
        valid=_valid(results, rows, get_monitor(monitor).name),
        test=_test(run, results),
        time_s=results.get("elapsed_s") if results else _sum(rows, "time_s"),
        status=_status(run, results, trial),
        trial=trial.get("number"),
    )


def _backbone(config: RunConfig) -> str:
    """The backbone, with "x N" for an ensemble of N members."""
    name = config.model.chosen_backbone
    members = config.finetune.members or 1
    return name if members == 1 or config.train.method == "features" else f"{name} x{members}"


def _valid(results: dict[str, Any], rows: list[dict[str, Any]], monitor: str) -> float | None:
    """The monitored metric of the kept model (results.json), else the best epoch's so far."""
    metrics = results.get("metrics") or {}
    if monitor in metrics:
        return float(metrics[monitor])
    values = [float(r[monitor]) for r in rows if r.get(monitor) is not None and not math.isnan(float(r[monitor]))]
    if not values:
        return None
    return min(values) if get_monitor(monitor).mode == "min" else max(values)


def _test(run: RunFolder, results: dict[str, Any]) -> float | None:
    """Test accuracy from training's results, else from `visiontune evaluate`'s eval/metrics.json."""
    metrics = results.get("metrics") or {}
    if "test_accuracy" in metrics:
        return float(metrics["test_accuracy"])
    evaluated = run.eval_metrics()
    return float(evaluated["accuracy"]) if "accuracy" in evaluated else None


def _status(run: RunFolder, results: dict[str, Any], trial: dict[str, Any]) -> str:
    if results:
        return "done"
    if trial.get("state") == "pruned":
        return "pruned"
    return "running" if _locked(run.path) else "stopped"


def _locked(path: Path) -> bool:
    """Whether a live process holds the run's lock: it is still being written."""
    try:
        check_unlocked(path)
    except RunLockedError:
        return True
    return False


def _date(run: RunFolder, info: dict[str, Any]) -> datetime | None:
    if info.get("started"):
        try:
            return datetime.fromisoformat(str(info["started"]))
        except ValueError:
            pass
    return datetime.fromtimestamp(run.file(CONFIG).stat().st_mtime)


def _data_label(source: str, sample: float) -> str:
    name = Path(str(source or "?")).name or str(source)
    return f"{name} ({sample:g})" if sample < 1.0 else name


def _sum(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return sum(values) if values else None


def sort_runs(runs: list[RunSummary], key: str = "date", *, reverse: bool = False) -> list[RunSummary]:
    """Runs in the order `key` gives: metrics best first, time fastest first, dates oldest first.

    Runs without a value for `key` (a stopped run has no test score) go last either way.
    """
    check_choice("sort", key, SORT_KEYS)

    def value(run: RunSummary) -> Any:
        if key == "valid":
            if run.valid is None:
                return None
            return run.valid if get_monitor(run.monitor).mode == "min" else -run.valid  # best first
        if key == "test":
            return None if run.test is None else -run.test
        if key == "epochs":
            return None if run.epochs is None else (run.freeze_epochs or 0) + run.epochs
        return getattr(run, {"size": "image_size", "time": "time_s"}.get(key, key))

    present = sorted((r for r in runs if value(r) is not None), key=value, reverse=reverse)
    return present + [r for r in runs if value(r) is None]
