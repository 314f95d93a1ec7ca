"""Searches on real Fashion-MNIST images: resuming, exact trial counts, re-run interrupted trials, best retrained."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import write_class_folders
from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig, load_yaml
from visiontune.errors import VisiontuneError
from visiontune.experiments.space import Range, SearchSpace
from visiontune.experiments.study import RETRY_OF, StudyError, default_storage
from visiontune.experiments.tune import OptunaPruning, TuneConfig, tune
from visiontune.runs.folder import RunFolder
from visiontune.runs.summary import find_runs
from visiontune.training.events import Callback
from visiontune.training.pipeline import train

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ten_classes(tmp_path_factory: pytest.TempPathFactory, fashion: dict[str, np.ndarray]) -> Path:
    """data/{train,val}/<class>: all 10 classes, 10 real images each per split (100 valid: 1 point = 1 image)."""
    root = tmp_path_factory.mktemp("ten") / "data"
    write_class_folders(root / "train", fashion, classes=tuple(range(10)), per_class=10)
    write_class_folders(root / "val", fashion, classes=tuple(range(10)), per_class=10, split="test")
    return root


def base_config(source: Path) -> RunConfig:
    return RunConfig(
        DataConfig(source=str(source)),
        ModelConfig(),
        TrainConfig(num_workers=0),
        FinetuneConfig(epochs=1, batch_size=32),
    )


# small_cnn: these tests are about the search's bookkeeping, not about what a pretrained backbone learns
SMALL_SPACE = SearchSpace(
    method=("finetune", "features"),
    backbone=("small_cnn",),
    image_size=(32, 48),
    lr=Range(1e-3, 1e-2, log=True),
    freeze_epochs=Range(0, 1, step=1),
    label_smoothing=Range(0.0, 0.1, step=0.05),
    augment=("none", "light"),
    rotation=Range(0.0, 30.0, step=15.0),
)


def load_study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=out.name, storage=default_storage(out))


def search_three_then_six(data: Path, out: Path, space: SearchSpace) -> optuna.Study:
    """Ask for 3 trials, then for 6 in the same folder: the study ends with exactly 6, none run twice."""
    first = tune(TuneConfig(base_config(data), trials=3, out=str(out), space=space))
    assert first.ran == [0, 1, 2]
    second = tune(TuneConfig(base_config(data), trials=6, out=str(out), space=space))
    assert second.ran == [3, 4, 5]  # the same study went on
    study = load_study(out)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state in FINISHED for t in trials)
    assert second.best is not None and second.best["number"] == study.best_trial.number

    # each trial is a run folder that `runs` lists, labelled with its trial number
    runs = {r.trial: r for r in find_runs(out)}
    assert sorted(runs) == list(range(6))
    for trial in trials:
        run = runs[trial.number]
        assert run.path == Path(trial.user_attrs["run_dir"])
        assert run.status == ("done" if trial.state == TrialState.COMPLETE else "pruned")
        assert run.image_size == trial.params["image_size"] and run.method == trial.params.get("method", "features")
        assert not (run.path / "checkpoints").exists()  # dropped; the model/ bundle stays for done trials
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 1 + 6
    for name in ("history.png", "importance.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and (out / name).stat().st_size > 10_000
    return study


def check_best_config_retrains(out: Path, study: optuna.Study, data: Path, tmp_path: Path) -> None:
    """best_config.yaml is a `train --config` file; retrained, it lands within 1 point of its trial."""
    best = study.best_trial
    values = load_yaml(out / "best_config.yaml")
    assert values["out"] is None and values["data"]["source"] == str(data)
    retrain = RunConfig.from_dict({**values, "out": str(tmp_path / "retrain")})
    assert retrain.model.image_size == best.params["image_size"]
    assert retrain.train.method == best.params.get("method", "features")
    result = train(retrain)
    assert abs(result.metrics[best.user_attrs["monitor"]] - best.value) <= 0.01


def test_resumed_search_over_the_whole_space_ends_with_n_trials_and_best_config_retrains(
    ten_classes: Path, tmp_path: Path
) -> None:
    """Fine-tuning and features, every dimension searched: about 20 s on 2 cores."""
    study = search_three_then_six(ten_classes, tmp_path / "search", SMALL_SPACE)
    assert {t.params["method"] for t in study.get_trials()} == {"finetune", "features"}
    check_best_config_retrains(tmp_path / "search", study, ten_classes, tmp_path)


class InterruptOnce(Callback):
    """Ctrl-C in the middle of the first trial's first epoch end."""

    def __init__(self) -> None:
        self.fired = False

    def after_epoch(self, trainer, metrics):
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def test_an_interrupted_trial_runs_again_with_its_parameters(ten_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    space = SearchSpace(
        method=("finetune",), backbone=("small_cnn",), image_size=(32,), freeze_epochs=(0,),
        augment=("none", "light"), rotation=None, label_smoothing=Range(0.0, 0.1, step=0.05),
    )  # fmt: skip
    config = TuneConfig(base_config(ten_classes), trials=1, out=str(out), space=space)
    with pytest.raises(KeyboardInterrupt):
        tune(config, callbacks=[InterruptOnce()])
    interrupted = load_study(out).get_trials()
    assert [t.state for t in interrupted] == [TrialState.FAIL]
    assert (out / "trial-0000" / "metrics.csv").is_file()  # it had finished an epoch

    result = tune(config)  # the same command again
    trials = load_study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs[RETRY_OF] == 0 and trials[1].params == interrupted[0].params
    assert result.ran == [1]
    again = tune(config)  # nothing left: the interrupted trial is not queued a second time
    assert again.ran == [] and len(load_study(out).get_trials()) == 2


def test_a_killed_workers_trial_is_run_again_by_the_next_worker(ten_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    (tmp_path / "space.yaml").write_text(
        "method: [finetune]\nbackbone: [small_cnn]\nimage_size: [32]\nfreeze_epochs: [0]\naugment: [none]\n"
    )
    args = ["tune", str(ten_classes), "--out", str(out), "--trials", "1", "--space", str(tmp_path / "space.yaml")]
    args += ["--epochs", "1", "--batch-size", "32", "--workers", "0", "--quiet"]  # base_config's recipe
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    worker = subprocess.Popen([sys.executable, "-m", "visiontune", *args], env=env, stderr=subprocess.PIPE, text=True)
    started = out / "trial-0000" / "config.yaml"
    deadline = time.monotonic() + 120
    while not started.is_file() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.kill()  # SIGKILL in its first trial: no handler runs, the trial stays RUNNING in the study
    _, stderr = worker.communicate()
    assert started.is_file() and worker.returncode == -signal.SIGKILL, stderr

    space = SearchSpace.from_dict(load_yaml(tmp_path / "space.yaml"))
    result = tune(TuneConfig(base_config(ten_classes), trials=1, out=str(out), space=space))
    trials = load_study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]  # its worker was gone: failed
    assert trials[1].user_attrs[RETRY_OF] == 0 and trials[1].params == trials[0].params and result.ran == [1]


def test_a_pruned_trial_stops_training_after_the_epoch_and_leaves_a_readable_run(
    ten_classes: Path, tmp_path: Path
) -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    trial = study.ask()  # every score is below 1.01: pruned at the first epoch it reports
    config = dataclasses.replace(
        base_config(ten_classes), model=ModelConfig(backbone="small_cnn", image_size=32), out=str(tmp_path / "run")
    )
    with pytest.raises(optuna.TrialPruned):
        train(config, callbacks=[OptunaPruning(trial)])  # freeze 1 + 1 epochs asked, 1 run
    assert list(trial.storage.get_trial(trial._trial_id).intermediate_values) == [1]
    (run,) = find_runs(tmp_path)
    assert len(RunFolder(run.path).epochs()) == 1 and run.valid is not None
    assert run.status == "stopped"  # not "running": train() released the run's lock on the way out


def test_resuming_with_another_search_is_refused(ten_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    space = SearchSpace(method=("features",), backbone=("small_cnn",), image_size=(32, 48))
    tune(TuneConfig(base_config(ten_classes), trials=1, out=str(out), space=space))
    other = SearchSpace(method=("features",), backbone=("small_cnn",), image_size=(32, 64))
    with pytest.raises(StudyError, match="different space"):
        tune(TuneConfig(base_config(ten_classes), trials=2, out=str(out), space=other))


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (SearchSpace(backbone=("efficientnet_lite0",), image_size=(16, 32)), "at least 32"),
        (SearchSpace(lr=Range(0.0, 0.1)), "`lr` must be in"),
        (SearchSpace(backbone=("efficientnet_lit0",)), "unknown model"),
    ],
)
def test_a_space_that_would_fail_a_trial_fails_first(tmp_path: Path, space: SearchSpace, message: str) -> None:
    config = TuneConfig(base_config(tmp_path), trials=2, out=str(tmp_path / "o"), space=space)
    with pytest.raises(VisiontuneError, match=message):
        tune(config)
    assert not (tmp_path / "o" / "study.db").exists()
