"""What the README promises of `tune` beyond the search itself: a dead worker's trial noticed by its stopped
heartbeat and run again, SIGTERM ending a trial like Ctrl-C, the median pruner (from the 4th trial, from
epoch 1), `--no-prune` and `--timeout`."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from typer.testing import CliRunner

from tests.conftest import write_class_folders
from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig, get_monitor
from visiontune.experiments.space import SearchSpace
from visiontune.experiments.study import ERROR, RETRY_OF, default_storage, open_storage, recover_lost_trials
from visiontune.experiments.tune import OptunaPruning, TuneConfig, _pruner, tune

REPO = Path(__file__).resolve().parents[2]
FEATURES_ONLY = SearchSpace(method=("features",), backbone=("small_cnn",), image_size=(28,))


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory: pytest.TempPathFactory, fashion: dict[str, np.ndarray]) -> Path:
    """data/<class>: 3 classes x 8 real images (features trials at 32 px take about a second)."""
    return write_class_folders(tmp_path_factory.mktemp("three") / "data", fashion, per_class=8)


def _base(source: Path) -> RunConfig:
    return RunConfig(
        DataConfig(source=str(source), valid_pct=0.25),
        ModelConfig(),
        TrainConfig(num_workers=0),
        FinetuneConfig(epochs=1, batch_size=16),
    )


# ----------------------------------------------------------------------------------- heartbeat
def _age_heartbeat(storage_url: str, trial_id: int, seconds: int) -> None:
    """Make the trial's last heartbeat `seconds` old, as if its worker had stopped beating then."""
    engine = sqlalchemy.create_engine(storage_url)
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = datetime('now', :age) WHERE trial_id = :id"),
            {"age": f"-{seconds} seconds", "id": trial_id},
        )
    engine.dispose()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_worker_whose_heartbeat_stopped_3_minutes_ago_loses_its_trial_to_a_rerun(tmp_path: Path) -> None:
    """A worker on another machine (its pid means nothing here) is dead once silent for 3 minutes, not before."""
    url = default_storage(tmp_path)
    study = optuna.create_study(storage=open_storage(url), study_name="s", direction="maximize")
    storage = study._storage
    trials = []
    for silent_s in (240, 120):  # 4 minutes: dead; 2 minutes: a slow epoch, still alive
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        trial.set_user_attr("host", f"not-{socket.gethostname()}")
        trial.set_user_attr("pid", os.getpid())  # alive here: only the heartbeat can tell
        storage.record_heartbeat(trial._trial_id)
        _age_heartbeat(url, trial._trial_id, silent_s)
        trials.append(trial)
    dead, alive = trials
    recover_lost_trials(study)
    states = {t.number: t for t in study.get_trials()}
    assert states[dead.number].state == TrialState.FAIL and ERROR not in states[dead.number].user_attrs
    assert states[alive.number].state == TrialState.RUNNING
    (queued,) = study.get_trials(states=(TrialState.WAITING,))  # run again, with its parameters, once
    assert queued.user_attrs[RETRY_OF] == dead.number
    rerun = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    assert rerun.params["lr"] == states[dead.number].params["lr"]
    recover_lost_trials(study)
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 0  # not queued a second time


# ----------------------------------------------------------------------------------- pruning
class _Trainer:
    monitor = get_monitor("valid_accuracy")


def _report(study: optuna.Study, scores: list[float], *, finish: bool = True) -> bool:
    """One trial reporting `scores` at epochs 1, 2, ... through the callback tune installs; True if pruned."""
    trial = study.ask()
    pruning = OptunaPruning(trial)
    try:
        for epoch, score in enumerate(scores, start=1):
            pruning.after_epoch(_Trainer(), {"epoch": epoch, "valid_accuracy": score})
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return True
    if finish:
        study.tell(trial, scores[-1])
    return False


def test_median_pruning_starts_at_the_4th_trial_and_at_epoch_1(three_classes: Path) -> None:
    study = optuna.create_study(direction="maximize", pruner=_pruner(TuneConfig(_base(three_classes))))
    assert not _report(study, [0.80, 0.85])
    assert not _report(study, [0.82, 0.86])
    assert not _report(study, [0.10, 0.12])  # the 3rd trial: too few finished ones to compare with
    assert _report(study, [0.11, 0.90])  # the 4th, below the median at epoch 1: stopped there
    assert len(study.trials[-1].intermediate_values) == 1
    assert not _report(study, [0.81, 0.87])  # above the median at each epoch: runs on


def test_no_prune_lets_every_trial_finish(three_classes: Path) -> None:
    study = optuna.create_study(direction="maximize", pruner=_pruner(TuneConfig(_base(three_classes), prune=False)))
    for _ in range(3):
        assert not _report(study, [0.80, 0.85])
    assert not _report(study, [0.05, 0.06]) and study.trials[-1].state == TrialState.COMPLETE


def test_tune_cli_passes_no_prune_and_timeout(three_classes: Path, tmp_path: Path, monkeypatch: Any) -> None:
    from visiontune.cli.main import app

    seen: list[TuneConfig] = []
    tune_module = importlib.import_module("visiontune.experiments.tune")  # the package exports a function of that name
    monkeypatch.setattr(tune_module, "tune", lambda config, **kwargs: seen.append(config) or 1 / 0)
    args = ["tune", str(three_classes), "--out", str(tmp_path / "o"), "--quiet"]
    CliRunner().invoke(app, [*args, "--no-prune", "--timeout", "90"])
    CliRunner().invoke(app, args)
    assert [(c.prune, c.timeout) for c in seen] == [(False, 90.0), (True, None)]
    assert isinstance(_pruner(seen[0]), optuna.pruners.NopPruner)


def test_timeout_starts_no_trial_after_it(three_classes: Path, tmp_path: Path) -> None:
    config = TuneConfig(_base(three_classes), trials=3, timeout=0.01, out=str(tmp_path / "o"), space=FEATURES_ONLY)
    result = tune(config)
    assert result.ran == [0]  # the first trial outlasts 10 ms: no second one starts
    assert [r["state"] for r in result.rows] == ["complete"]


# ----------------------------------------------------------------------------------- SIGTERM
@pytest.mark.slow
def test_sigterm_ends_the_trial_like_ctrl_c_and_it_runs_again(three_classes: Path, tmp_path: Path) -> None:
    """A scheduler's SIGTERM (Slurm, Kubernetes): the trial is failed as interrupted (no error of its own), the
    command says how to resume, and the next run of the same command runs it again with its parameters."""
    out = tmp_path / "search"
    (tmp_path / "space.yaml").write_text(
        "method: [finetune]\nbackbone: [efficientnet_lite0]\nimage_size: [32]\nfreeze_epochs: [0]\naugment: [none]\n"
    )
    args = ["tune", str(three_classes), "--out", str(out), "--trials", "1", "--space", str(tmp_path / "space.yaml")]
    args += ["--epochs", "30", "--batch-size", "8", "--workers", "0", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    worker = subprocess.Popen([sys.executable, "-m", "visiontune", *args], env=env, stderr=subprocess.PIPE, text=True)
    metrics = out / "trial-0000" / "metrics.csv"  # an epoch ended: the trial is well inside training
    deadline = time.monotonic() + 120
    while not metrics.is_file() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 130, stderr
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    study = optuna.load_study(study_name=out.name, storage=default_storage(out))
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL and ERROR not in trial.user_attrs  # interrupted, not failed
    recover_lost_trials(study)
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs[RETRY_OF] == trial.number and queued.system_attrs["fixed_params"] == trial.params
