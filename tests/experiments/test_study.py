"""The study around Optuna: storage URLs, the workers' lock, lost trials queued again once, one search per study."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pytest
from optuna.trial import TrialState

from visiontune.errors import MissingPackageError
from visiontune.experiments.charts import plot_optuna
from visiontune.experiments.study import (
    ERROR,
    RETRY_OF,
    StudyError,
    check_search,
    fail_dead_local_trials,
    open_lock,
    open_storage,
    redact,
    requeue_lost_trials,
    storage_url,
    study_lock_key,
)


def test_storage_urls(tmp_path: Path) -> None:
    assert storage_url(None, tmp_path) == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    assert storage_url("postgresql://me@db/x", tmp_path) == "postgresql+psycopg://me@db/x"
    assert storage_url("postgresql+psycopg2://me@db/x", tmp_path) == "postgresql+psycopg2://me@db/x"  # as given
    assert "secret" not in redact("postgresql+psycopg://me:secret@db/x") and "me" in redact("postgresql://me:s@db/x")
    assert study_lock_key("a") == study_lock_key("a") != study_lock_key("b")
    assert -(2**63) <= study_lock_key("a") < 2**63  # a PostgreSQL bigint


@pytest.mark.parametrize("url", ["nosuchdb://x/y", "sqlite:////nonexistent-dir/sub/study.db"])
def test_a_storage_that_cannot_be_opened_is_one_error(url: str) -> None:
    with pytest.raises((StudyError, MissingPackageError), match="--storage"):
        open_storage(url)


def make_trial(study: optuna.Study, state: TrialState, **attrs: object) -> optuna.trial.FrozenTrial:
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    if state != TrialState.RUNNING:
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    return study.get_trials()[trial.number]


def test_lost_trials_are_queued_again_once_and_failed_ones_never() -> None:
    study = optuna.create_study()
    lost = make_trial(study, TrialState.FAIL)  # interrupted or stale: no error of its own
    make_trial(study, TrialState.FAIL, **{ERROR: "ValueError: bad"})
    make_trial(study, TrialState.COMPLETE)
    assert requeue_lost_trials(study) == [lost.number]
    assert requeue_lost_trials(study) == []  # a second worker, or a second resume, does not queue it again
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs[RETRY_OF] == lost.number
    assert study.ask().suggest_float("x", 0, 1) == lost.params["x"]  # the next trial re-runs its parameters


def test_a_running_trial_whose_local_worker_is_gone_is_failed(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    dead = make_trial(study, TrialState.RUNNING, host=host, pid=int(gone.stdout))
    alive = make_trial(study, TrialState.RUNNING, host=host, pid=1)  # pid 1 always exists
    elsewhere = make_trial(study, TrialState.RUNNING, host=f"not-{host}", pid=int(gone.stdout))
    fail_dead_local_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dead.number] == TrialState.FAIL
    assert states[alive.number] == states[elsewhere.number] == TrialState.RUNNING  # elsewhere: the heartbeat's job
    assert requeue_lost_trials(study) == [dead.number]


def test_a_study_refuses_another_search() -> None:
    study = optuna.create_study()
    search = {"space": {"image_size": [32, 64]}, "base": {"train": {"epochs": 1}}}
    check_search(study, search, "sqlite:///x.db")
    check_search(study, search, "sqlite:///x.db")  # the same search resumes
    with pytest.raises(StudyError, match="different base"):
        check_search(study, {**search, "base": {"train": {"epochs": 2}}}, "sqlite:///x.db")


def test_the_file_lock_lets_one_worker_in_at_a_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first, second = open_lock(url, "s", tmp_path), open_lock(url, "s", tmp_path)
    first.acquire()
    entered = threading.Event()
    waiter = threading.Thread(target=lambda: (second.acquire(), entered.set()))
    waiter.start()
    assert not entered.wait(0.3)  # blocked while the first holds it
    first.release()
    first.release()  # releasing twice is harmless (the objective and the loop both release)
    assert entered.wait(5)
    waiter.join()
    second.close()
    first.close()


def test_optuna_plots_leave_matplotlib_settings_alone(tmp_path: Path) -> None:
    """Optuna switches matplotlib to ggplot globally; charts drawn after ours must keep their own style."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) - t.suggest_int("y", 0, 3), n_trials=6)
    before = dict(plt.rcParams)
    for kind in ("importance", "history"):
        path = plot_optuna(kind, study, tmp_path / f"{kind}.png")
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000
    assert dict(plt.rcParams) == before
