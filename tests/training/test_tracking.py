"""`--log tensorboard,mlflow`: what a run logged, read back with TensorBoard's and MLflow's own readers.

One tiny training with both trackers on a local MLflow store (SQLite, as MLflow 3 defaults to)
is the fast test; the features method, `tune`'s nested runs and `--resume` are slow ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_class_folders
from visiontune.config import DataConfig, FeaturesConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
from visiontune.errors import ConfigError, MissingPackageError
from visiontune.training.pipeline import train

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

EPOCH_SCALARS = ("train_loss", "valid_loss", "valid_accuracy", "valid_balanced_accuracy", "valid_macro_f1",
                 "lr", "images_per_s", "data_wait_pct", "time_s")  # fmt: skip
FINAL = ("final/valid_accuracy", "final/valid_loss", "final/valid_ece", "final/test_accuracy")


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite store keeps artifacts in ./mlruns: the test's folder, never the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def data(tmp_path: Path, fashion: dict) -> Path:
    """train/<3 classes> x 12 and test/<3 classes> x 4 real Fashion-MNIST images."""
    root = tmp_path / "data"
    write_class_folders(root / "train", fashion, per_class=12)
    write_class_folders(root / "test", fashion, per_class=4, split="test")
    return root


def tracked(data: Path, out: Path, uri: str, *, log: str = "tensorboard,mlflow", **changes: Any) -> RunConfig:
    config = RunConfig(
        DataConfig(source=str(data), valid_pct=0.25),
        ModelConfig(backbone="small_cnn", image_size=28),
        TrainConfig(method="scratch", num_workers=0, augment="none", log=log, mlflow_uri=uri,  # type: ignore[arg-type]
                    mlflow_experiment="fashion"),
        FinetuneConfig(epochs=2, freeze_epochs=1, batch_size=16, lr=3e-3),
        out=str(out),
    )  # fmt: skip
    return config.replace("train", **changes) if changes else config


def tensorboard_events(run: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return events.Reload()


def only_run(client: Any, experiment: str = "fashion") -> Any:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_both_trackers_log_every_epoch_the_final_metrics_figures_and_bundle(data: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(tracked(data, tmp_path / "run", uri))
    epochs = [int(row["epoch"]) for row in _rows(result.run_dir)]
    assert epochs == [1, 2, 3]  # scratch: one phase of freeze_epochs + epochs

    events = tensorboard_events(result.run_dir)
    tags = events.Tags()
    for name in EPOCH_SCALARS:
        assert [e.step for e in events.Scalars(name)] == epochs, name
    assert [round(e.value, 6) for e in events.Scalars("valid_accuracy")] == [
        round(float(row["valid_accuracy"]), 6) for row in _rows(result.run_dir)
    ]
    assert any(tag.startswith("lr/head") for tag in tags["scalars"])  # each parameter group's rate
    for name in FINAL:
        assert events.Scalars(name)[-1].value == pytest.approx(result.metrics[name.removeprefix("final/")], abs=1e-6)
    assert set(tags["images"]) == {"confusion_matrix", "valid_predictions"}
    image = events.Images("confusion_matrix")[0]
    assert image.width > 100 and image.height > 100
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert b"model.backbone" in hparams["_hparams_/session_start_info"]

    client = mlflow.MlflowClient(uri)
    run = only_run(client)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["model.backbone"] == "small_cnn" and run.data.params["finetune.lr"] == "0.003"
    assert "train.mlflow_uri" not in run.data.params
    history = client.get_metric_history(run.info.run_id, "valid_accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == epochs
    assert run.data.metrics["final/test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    info = result.run_dir.joinpath("run.json").read_text()
    assert run.data.tags["visiontune.data_manifest_sha256"] in info and run.info.run_id in info
    assert run.data.tags["visiontune.version.torch"] and run.data.tags["visiontune.hardware.cpus"]
    artifacts = {
        a.path for folder in ("figures", "run", "bundle") for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert {"figures/history.png", "figures/confusion_matrix.png", "figures/valid_predictions.png", "run/config.yaml",
            "run/results.json", "bundle/bundle.json", "bundle/model.safetensors"} <= artifacts  # fmt: skip


def test_an_ensembles_members_log_to_their_own_folders_and_child_runs(data: Path, tmp_path: Path) -> None:
    """Each member's epochs count from 1: they must not land as repeated steps in the run's curves."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tracked(data, tmp_path / "run", uri)
    result = train(dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, members=2)))
    member = result.run_dir / "members" / "2"
    for folder in (result.run_dir, member):
        events = tensorboard_events(folder)
        assert [round(e.value, 6) for e in events.Scalars("valid_accuracy")] == [
            round(float(row["valid_accuracy"]), 6) for row in _rows(folder)
        ], folder  # steps 1, 2, 3 once each, and the values of that folder's metrics.csv
    run_events = tensorboard_events(result.run_dir)
    assert run_events.Scalars("final/test_accuracy")[-1].value == pytest.approx(result.metrics["test_accuracy"])
    assert "final/test_accuracy" not in tensorboard_events(member).Tags()["scalars"]

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fashion").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("visiontune.kind") == "run"]
    (child,) = [r for r in runs if r.data.tags.get("visiontune.kind") == "member"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.data.tags["visiontune.member"] == "2"
    assert parent.info.status == child.info.status == "FINISHED"
    assert int(child.data.params["train.seed"]) == int(parent.data.params["train.seed"]) + 1 == config.train.seed + 1
    for run, folder in ((parent, result.run_dir), (child, member)):
        history = client.get_metric_history(run.info.run_id, "valid_loss")
        assert sorted((m.step, round(m.value, 5)) for m in history) == [
            (int(row["epoch"]), round(float(row["valid_loss"]), 5)) for row in _rows(folder)
        ]
    assert parent.data.metrics["final/test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    assert "final/test_accuracy" not in child.data.metrics
    assert json.loads((member / "run.json").read_text())["mlflow"]["run_id"] == child.info.run_id


def _rows(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_a_missing_library_is_one_line_naming_the_extra(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    with pytest.raises(
        MissingPackageError, match=r"^--log mlflow needs the mlflow package: pip install 'visiontune\[mlflow\]'"
    ):
        train(tracked(data, tmp_path / "run", "sqlite:///x.db", log="mlflow"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_unreachable_store_is_one_line_without_its_password_before_the_run_folder_is_made(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(ConfigError, match=r"^MLflow at http://ann:\*\*\*@127\.0\.0\.1:9/: .*--mlflow-uri") as caught:
        train(tracked(data, tmp_path / "run", "http://ann:secret@127.0.0.1:9/", log="mlflow"))
    assert "secret" not in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_log_names_are_checked_and_none_means_no_tracker() -> None:
    assert TrainConfig(log="tensorboard, mlflow,mlflow").log == ("tensorboard", "mlflow")  # type: ignore[arg-type]
    assert TrainConfig(log="none").log == ()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="wandb"):
        TrainConfig(log="wandb")  # type: ignore[arg-type]


def test_a_features_run_logs_its_heads_as_metrics(data: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tracked(data, tmp_path / "run", uri, method="features")
    heads = FeaturesConfig(heads=("logreg", "knn"))
    config = RunConfig(config.data, ModelConfig(image_size=32), config.train, features=heads, out=config.out)
    result = train(config)
    events = tensorboard_events(result.run_dir)
    for head in ("logreg", "knn"):
        assert events.Scalars(f"heads/{head}/valid_accuracy")[0].step == 0
    assert set(events.Tags()["images"]) == {"confusion_matrix", "valid_predictions"}
    run = only_run(mlflow.MlflowClient(uri))
    assert run.data.metrics["heads/knn/valid_accuracy"] == pytest.approx(
        next(h["valid_accuracy"] for h in result.heads if h["head"] == "knn")
    )
    assert run.data.metrics["final/valid_accuracy"] == pytest.approx(result.metrics["valid_accuracy"])
    assert run.data.params["features.heads"] == "logreg,knn"


@pytest.mark.slow
def test_tune_trials_are_child_runs_tagged_with_their_state(data: Path, tmp_path: Path) -> None:
    import optuna

    from visiontune.training.mlflow_log import study_run, trial_run
    from visiontune.training.tracking import Tracker

    class PruneAtOnce(Tracker):
        def after_epoch(self, trainer: Any, metrics: dict[str, Any]) -> None:
            raise optuna.TrialPruned("below the median")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = tracked(data, tmp_path / "unused", uri, log="mlflow")
    with study_run(base, "study") as study:
        with trial_run(0, pruned=optuna.TrialPruned):
            train(tracked(data, tmp_path / "trial-0", uri, log="mlflow"))
        with pytest.raises(optuna.TrialPruned), trial_run(1, pruned=optuna.TrialPruned):
            train(tracked(data, tmp_path / "trial-1", uri, log="mlflow"), callbacks=[PruneAtOnce()])
    client = mlflow.MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([study.experiment_id])}
    assert runs["study"].info.status == "FINISHED"
    for name, state in (("trial-0", "complete"), ("trial-1", "pruned")):
        assert runs[name].data.tags["mlflow.parentRunId"] == study.run_id
        assert runs[name].data.tags["optuna.trial_state"] == state
        assert runs[name].info.status == "FINISHED"
    assert len(client.get_metric_history(runs["trial-1"].info.run_id, "valid_accuracy")) == 1  # its one epoch


@pytest.mark.slow
def test_a_resumed_run_continues_its_mlflow_run_without_doubled_epochs(data: Path, tmp_path: Path) -> None:
    from visiontune.errors import Interrupted
    from visiontune.training.tracking import Tracker

    class StopAfterTwo(Tracker):
        def after_epoch(self, trainer: Any, metrics: dict[str, Any]) -> None:
            if metrics["epoch"] == 2:
                raise KeyboardInterrupt

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(Interrupted):
        train(tracked(data, tmp_path / "run", uri), callbacks=[StopAfterTwo()])
    client = mlflow.MlflowClient(uri)
    assert only_run(client).info.status == "KILLED"
    result = train(tracked(data, tmp_path / "run", uri), resume=tmp_path / "run")
    run = only_run(client)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "valid_accuracy"))
    assert steps[-1] == 3 and set(steps) == {1, 2, 3}
    assert [e.step for e in tensorboard_events(result.run_dir).Scalars("valid_accuracy")] == [1, 2, 3]


@pytest.mark.slow
def test_an_ensemble_resumed_in_member_2_continues_its_child_run(data: Path, tmp_path: Path) -> None:
    from visiontune.errors import Interrupted
    from visiontune.training.tracking import Tracker

    class StopInMember2(Tracker):  # member 1 has 3 epochs; stop after member 2's second
        seen = 0

        def after_epoch(self, trainer: Any, metrics: dict[str, Any]) -> None:
            self.seen += 1
            if self.seen == 5:
                raise KeyboardInterrupt

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tracked(data, tmp_path / "run", uri)
    config = dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, members=2))
    with pytest.raises(Interrupted):
        train(config, callbacks=[StopInMember2()])
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("fashion").experiment_id
    assert sorted(r.info.status for r in client.search_runs([experiment])) == ["KILLED", "KILLED"]
    result = train(config, resume=tmp_path / "run")
    runs = client.search_runs([experiment])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}  # the same two runs, continued
    (child,) = [r for r in runs if r.data.tags.get("visiontune.kind") == "member"]
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "valid_accuracy"))
    assert set(steps) == {1, 2, 3} and steps[-1] == 3
    member = result.run_dir / "members" / "2"
    assert [e.step for e in tensorboard_events(member).Scalars("valid_accuracy")] == [1, 2, 3]
    assert [e.step for e in tensorboard_events(result.run_dir).Scalars("valid_accuracy")] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="needs torchrun")
def test_under_torchrun_only_the_main_process_logs(data: Path, tmp_path: Path) -> None:
    from tests.experiments.test_postgres import REPO, free_port

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri}
    command = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "visiontune", "train", str(data / "train"), "--model", "small_cnn", "--image-size", "28",
        "--method", "scratch", "--epochs", "1", "--freeze-epochs", "1", "--batch-size", "8", "--workers", "0",
        "--out", str(tmp_path / "run"), "--trackers", "tensorboard,mlflow", "--mlflow-experiment", "fashion", "--quiet",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 1  # one event file: one writer
    assert [e.step for e in tensorboard_events(tmp_path / "run").Scalars("valid_loss")] == [1, 2]
    client = mlflow.MlflowClient(uri)
    run = only_run(client)  # one run, not one per process
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "valid_loss")) == [1, 2]


@pytest.mark.slow
def test_tune_with_log_mlflow_nests_every_trial_under_the_study_run(data: Path, tmp_path: Path) -> None:
    from visiontune.experiments.space import SearchSpace
    from visiontune.experiments.tune import TuneConfig, tune

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = tracked(data, tmp_path / "unused", uri, log="mlflow")
    space = SearchSpace(method=("finetune",), backbone=("efficientnet_lite0",), image_size=(32,), lr=(3e-3, 1e-2),
                        freeze_epochs=None, label_smoothing=None, augment=None, rotation=None)  # fmt: skip
    result = tune(TuneConfig(dataclasses.replace(base, out=None), trials=2, out=str(tmp_path / "study"), space=space))
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fashion").experiment_id])
    (study,) = [r for r in runs if r.data.tags.get("visiontune.kind") == "study"]
    assert study.info.run_name == result.study_name and study.info.status == "FINISHED"
    trials = sorted((r for r in runs if r is not study), key=lambda r: int(r.data.tags["optuna.trial_number"]))
    assert [r.info.run_name for r in trials] == ["trial-0000", "trial-0001"]
    for trial, row in zip(trials, sorted(result.rows, key=lambda row: row["number"]), strict=True):
        assert trial.data.tags["mlflow.parentRunId"] == study.info.run_id
        assert trial.data.tags["optuna.trial_state"] == row["state"] == "complete"
