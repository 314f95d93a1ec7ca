"""`MLflowLogger` (`--log mlflow`): each training run an MLflow run; each `tune` trial a child of its study's run.

What lands in MLflow: params (the resolved config, flattened: `finetune.lr`, `model.backbone`,
...), metrics per epoch with the epoch as step (metrics.csv's names, `lr/<group>` per parameter
group), the final metrics (`final/valid_accuracy`, ...; a features run's heads as
`heads/<head>/<score>`), tags (data manifest hash, library versions, hardware, run folder), and
artifacts: `figures/` (history, lr_find, confusion matrix, sample predictions), `run/` (config.yaml,
run.json, results.json, metrics.csv, heads.csv, classes.json) and `bundle/` (the model bundle,
which `visiontune export RUN --mlflow` turns into an MLflow model).

An ensemble's member 2, 3, ... is a child run of the run (tags `mlflow.parentRunId`,
`visiontune.member`; its params, its epochs), recorded in its folder's run.json; member 1's epochs
and the ensemble's final metrics, figures and bundle are the run's own.

The tracking URI is `--mlflow-uri`, else `MLFLOW_TRACKING_URI`, else MLflow's default (a SQLite
store, mlflow.db, in the working folder, artifacts in ./mlruns). run.json records the run id,
so `train --resume` continues the same MLflow run. Everything goes through an `MlflowClient`
(no global active run), so a tune process nests trials without touching a user's own runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visiontune.config import RunConfig
from visiontune.errors import ConfigError
from visiontune.runs.folder import BUNDLE, HISTORY, LR_FIND, RunFolder
from visiontune.training.tracking import RunEnd, Tracker, flat_params, require

if TYPE_CHECKING:
    from visiontune.training.fitting import Prepared
    from visiontune.training.trainer import Trainer

RUN_FILES = ("config.yaml", "run.json", "results.json", "metrics.csv", "heads.csv", "classes.json")
TRIAL_STATE = "optuna.trial_state"  # complete, pruned or fail: the child run of a tune trial
PARENT_TAG = "mlflow.parentRunId"


def mlflow_client(uri: str | None) -> Any:
    """An MlflowClient on `uri`, else on MLFLOW_TRACKING_URI, else on MLflow's default store."""
    mlflow = require("mlflow")
    return mlflow.MlflowClient(tracking_uri=uri or mlflow.get_tracking_uri())


@contextmanager
def store_errors(client: Any) -> Iterator[None]:
    """MLflow's errors (a store that can't be reached or opened) as one line naming the URI and the options."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        reason = (str(exc).strip().splitlines() or ["failed"])[0][:300]
        message = f"MLflow at {client.tracking_uri}: {reason} (check --mlflow-uri or MLFLOW_TRACKING_URI)"
        raise ConfigError(re.sub(r"//([^:/@\s]+):[^@/\s]+@", r"//\1:***@", message)) from None  # no password


def experiment_id(client: Any, name: str) -> str:
    """The experiment called `name`, created when missing (another process may create it first)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # created meanwhile by a concurrent worker
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def experiment_name(config: RunConfig) -> str:
    return config.train.mlflow_experiment or Path(config.data.source).resolve().name or "visiontune"


@dataclass
class StudyRun:
    """The MLflow run of a `tune` study: the trials' runs are its children, tagged with their trial state."""

    client: Any
    run_id: str
    experiment_id: str
    next_tags: dict[str, str] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)

    @contextmanager
    def trial(self, number: int, *, pruned: type[BaseException]) -> Iterator[None]:
        """The runs started in the body are trial `number`'s; tagged complete, pruned or fail at the end."""
        before, state = len(self.children), "fail"
        self.next_tags = {"optuna.trial_number": str(number)}
        try:
            yield
            state = "complete"
        except pruned:
            state = "pruned"
            raise
        finally:
            self.next_tags = {}
            for run_id in self.children[before:]:
                self.client.set_tag(run_id, TRIAL_STATE, state)
                if state == "pruned":  # stopped by the pruner: a finished trial, not a failed run
                    self.client.set_terminated(run_id, "FINISHED")


_STUDY: ContextVar[StudyRun | None] = ContextVar("visiontune_mlflow_study", default=None)


@contextmanager
def study_run(config: RunConfig, study: str) -> Iterator[StudyRun | None]:
    """With `--log mlflow`, the study's run (found again when the study resumes) for the trials to nest in."""
    if "mlflow" not in config.train.log:
        yield None
        return
    client = mlflow_client(config.train.mlflow_uri)
    with store_errors(client):
        experiment = experiment_id(client, experiment_name(config))
        query = f"tags.`visiontune.study` = '{study}' and tags.`visiontune.kind` = 'study'"
        found = client.search_runs([experiment], filter_string=query, max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            tags = {"mlflow.runName": study, "visiontune.study": study, "visiontune.kind": "study"}
            run_id = client.create_run(experiment, tags=tags).info.run_id
    parent = StudyRun(client, run_id, experiment)
    token = _STUDY.set(parent)
    try:
        yield parent
    except BaseException as error:
        client.set_terminated(run_id, _status(error))
        raise
    else:
        client.set_terminated(run_id, "FINISHED")
    finally:
        _STUDY.reset(token)


@contextmanager
def trial_run(number: int, *, pruned: type[BaseException]) -> Iterator[None]:
    """Trial `number` of the current study run (a no-op without one)."""
    study = _STUDY.get()
    if study is None:
        yield
        return
    with study.trial(number, pruned=pruned):
        yield


def _status(error: BaseException) -> str:
    return "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"


class MLflowLogger(Tracker):
    """One MLflow run per training run (continued on resume), logged through an MlflowClient."""

    def __init__(self, config: RunConfig) -> None:
        """Connects to the store and finds (or makes) the experiment: a bad URI fails before the run folder is made."""
        self.client = mlflow_client(config.train.mlflow_uri)
        study = _STUDY.get()
        with store_errors(self.client):
            self._experiment_id = study.experiment_id if study else experiment_id(self.client, experiment_name(config))
        self.run_id = ""  # where epochs go: the run's, or the training member's child run
        self.parent_id = ""  # the run's: final metrics and artifacts

    def start(self, p: Prepared) -> None:
        with store_errors(self.client):
            self._continue_or_create(p.run, lambda: self._create(p), resume=p.resume)
            self._log(params=_known(flat_params(p.config)), tags=run_tags(p.run))
        self.parent_id = self.run_id

    def member(self, member: Prepared, number: int, of: int) -> None:
        with store_errors(self.client):
            self._end_member("FINISHED")
            if number == 1:
                return
            name = f"{member.run.path.parents[1].name} member {number}"  # RUN/members/<n>
            tags = {"mlflow.runName": name, PARENT_TAG: self.parent_id, "visiontune.kind": "member",
                    "visiontune.member": str(number)}  # fmt: skip
            new = lambda: self.client.create_run(self._experiment_id, tags=tags).info.run_id  # noqa: E731
            self._continue_or_create(member.run, new, resume=True)  # only a resumed run's member folder records one
            self._log(params=_known(flat_params(member.config)))

    def _continue_or_create(self, run: RunFolder, create: Callable[[], str], *, resume: bool) -> None:
        """The MLflow run that `run`'s run.json records (on a resume, if the store still has it), else a new one."""
        recorded = run.info().get("mlflow", {}) if resume else {}
        if recorded.get("run_id") and self._exists(recorded["run_id"]):
            self.run_id = recorded["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = create()
            run.update_info({"mlflow": {"run_id": self.run_id, "experiment_id": self._experiment_id}})

    def _end_member(self, status: str) -> None:
        """The member's child run ended; epochs and final metrics go to the run again."""
        if self.run_id and self.run_id != self.parent_id:
            self.client.set_terminated(self.run_id, status)
        self.run_id = self.parent_id

    def _create(self, p: Prepared) -> str:
        study = _STUDY.get()
        tags = {"mlflow.runName": p.run.path.name, "visiontune.kind": "run"}
        if study is not None:
            tags |= {PARENT_TAG: study.run_id, **study.next_tags}
        run_id = self.client.create_run(self._experiment_id, tags=tags).info.run_id
        if study is not None:
            study.children.append(run_id)
        return run_id

    def _exists(self, run_id: str) -> bool:
        try:
            self._experiment_id = self.client.get_run(run_id).info.experiment_id
        except Exception:  # another store, or deleted: start a new run
            return False
        return True

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        values = {k: v for k, v in metrics.items() if _number(v) and k != "epoch"}
        for index, group in enumerate(trainer.optimizer.param_groups):
            values[f"lr/{group.get('name', index)}"] = group["lr"]
        with store_errors(self.client):
            self._log(metrics=values, step=int(metrics["epoch"]))

    def finish(self, p: Prepared, end: RunEnd) -> None:
        with store_errors(self.client):
            self._end_member("FINISHED")
            self._upload(p, end)
            self.client.set_terminated(self.run_id, "FINISHED")

    def _upload(self, p: Prepared, end: RunEnd) -> None:
        final = {f"final/{k}": v for k, v in end.metrics.items()}
        # params again: those unknown at the start (an lr found by --lr auto) are logged now
        self._log(metrics={**final, **end.head_metrics()}, step=end.step, params=flat_params(p.config))
        for name in (HISTORY, LR_FIND):
            if p.run.file(name).is_file():
                self.client.log_artifact(self.run_id, str(p.run.file(name)), "figures")
        for path in end.figures.values():
            self.client.log_artifact(self.run_id, str(path), "figures")
        for name in RUN_FILES:
            if p.run.file(name).is_file():
                self.client.log_artifact(self.run_id, str(p.run.file(name)), "run")
        self.client.log_artifacts(self.run_id, str(p.run.file(BUNDLE)), "bundle")

    def fail(self, p: Prepared | None, error: BaseException) -> None:
        self._end_member(_status(error))
        if self.run_id:
            self.client.set_terminated(self.run_id, _status(error))

    def _log(
        self, *, metrics: dict[str, float] | None = None, step: int = 0, params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, v) for k, v in (params or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )


def run_tags(run: RunFolder) -> dict[str, str]:
    """What run.json says about where the run came from: data manifest hash, versions, hardware, method."""
    info = run.info()
    tags = {"visiontune.run_dir": str(run.path.resolve()), "visiontune.method": str(info.get("method"))}
    tags["visiontune.data_manifest_sha256"] = str(info.get("data_manifest_sha256"))
    tags["visiontune.precision"] = str(info.get("precision"))
    tags["visiontune.processes"] = str(info.get("processes"))
    for key, value in (info.get("versions") or {}).items():
        tags[f"visiontune.version.{key}"] = str(value)
    for key, value in (info.get("hardware") or {}).items():
        tags[f"visiontune.hardware.{key}"] = ", ".join(value) if isinstance(value, list) else str(value)
    return tags


def _known(params: dict[str, str]) -> dict[str, str]:
    """Params with a value: MLflow refuses to change one, and `None` may still be resolved (`--lr auto`)."""
    return {k: v for k, v in params.items() if v != "None"}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
