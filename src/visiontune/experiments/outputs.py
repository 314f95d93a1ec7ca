"""What a search leaves in its folder: trials.csv, best_config.yaml, the charts and tune.json.

Everything is read back from the study (not from this worker's memory), so with several workers
each one's outputs describe the whole study as it stood when that worker finished.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visiontune.config import RunConfig, monitor_name, save_yaml
from visiontune.experiments import charts
from visiontune.experiments.space import PARAMS
from visiontune.experiments.study import redact, storage_url
from visiontune.io import atomic_write_json, atomic_write_text
from visiontune.runs.folder import csv_text

if TYPE_CHECKING:
    from visiontune.experiments.tune import TuneConfig

log = logging.getLogger(__name__)

ROW_FIELDS = ("number", "state", "value", *PARAMS, "epoch_s", "elapsed_s", "best_epoch", "test_accuracy", "run_dir")


def trial_row(trial: Any) -> dict[str, Any]:
    """One trial as a row of trials.csv (parameters a trial did not draw are empty)."""
    attrs = trial.user_attrs
    row = {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value}
    row.update({name: trial.params.get(name) for name in PARAMS})
    row.update({k: attrs.get(k) for k in ("epoch_s", "elapsed_s", "best_epoch", "test_accuracy", "run_dir")})
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        row["value"] = trial.intermediate_values[max(trial.intermediate_values)]  # its last reported epoch
    return row


def best_trial(study: Any) -> dict[str, Any] | None:
    """The best complete trial: number, value, params, run folder and resolved config (None before one completes)."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    trial = study.best_trial
    return {
        "number": trial.number,
        "value": trial.value,
        "params": trial.params,
        "run_dir": trial.user_attrs.get("run_dir"),
        "config": trial.user_attrs.get("config"),
    }


def study_monitor(study: Any) -> str:
    """The validation metric the trials were scored by (accuracy, or balanced accuracy on imbalanced data)."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return monitor_name(str(trial.user_attrs.get("monitor", "valid_accuracy")))
    return "valid_accuracy"


def write_outputs(
    config: TuneConfig, study: Any, rows: list[dict[str, Any]], best: dict[str, Any] | None, *, importance: bool
) -> dict[str, str]:
    """trials.csv, best_config.yaml, the charts and tune.json in OUT; returns what was written.

    `importance`: draw importance.png (pointless with one searched parameter: it is trivially 100%).
    """
    out, files = config.out_dir, {}
    files["trials"] = str(_write_csv(out / "trials.csv", rows))
    if best is not None and best["config"]:
        files["best_config"] = str(_write_best_config(out / "best_config.yaml", best["config"]))
    finished = [r for r in rows if r["state"] == "complete"]
    if finished:
        files["history"] = str(charts.plot_optuna("history", study, out / "history.png"))
    if importance and len(finished) >= 2:
        try:
            files["importance"] = str(charts.plot_optuna("importance", study, out / "importance.png"))
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter varied across the finished trials
            log.warning("importance.png not drawn: %s", exc)
    if config.grid and finished:
        key = next(iter(config.grid))
        files["grid"] = str(charts.plot_grid(finished, key, study_monitor(study), out / "grid.png"))
    atomic_write_json(
        out / "tune.json",
        {
            "study": config.study_name,
            "storage": redact(storage_url(config.storage, out)),
            "direction": config.direction,
            "trials": config.trials,
            "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
            "best": {k: v for k, v in (best or {}).items() if k != "config"} or None,
            "files": files,
        },
    )
    return files


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    cells = (["" if row.get(k) is None else row[k] for k in ROW_FIELDS] for row in rows)
    atomic_write_text(path, csv_text([ROW_FIELDS, *cells]))
    return path


def _write_best_config(path: Path, config: dict[str, Any]) -> Path:
    """The trial's resolved config, minus where it was written: `train --config` picks a new folder."""
    values = {**config, "out": None, "name": None}
    RunConfig.from_dict(values)  # what train --config will do with it
    save_yaml(values, path)
    return path
