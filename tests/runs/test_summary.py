"""Run folders as rows: what the walk finds, a stopped or running run's row, and the sort orders."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import pytest

from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig, save_yaml
from visiontune.errors import ConfigError
from visiontune.experiments.compare import config_differences
from visiontune.runs.lock import run_lock
from visiontune.runs.summary import RunSummary, find_runs, read_run, sort_runs
from visiontune.training.callbacks import EPOCH_FIELDS


def write_run(
    folder: Path, accuracies: list[float], *, image_size: int = 64, results: bool = False, members: int | None = None
) -> Path:
    """A run folder as train leaves it after len(accuracies) epochs (results.json only once it finished)."""
    config = RunConfig(DataConfig(source="/data/photos", sample=0.1), ModelConfig(image_size=image_size), TrainConfig(),
                       FinetuneConfig(members=members))  # fmt: skip
    save_yaml(config.to_dict(), folder / "config.yaml")
    (folder / "run.json").write_text(json.dumps({"started": "2026-11-20T10:00:00", "monitor": "valid_accuracy"}))
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=EPOCH_FIELDS)
        writer.writeheader()
        for epoch, accuracy in enumerate(accuracies, 1):
            writer.writerow({"epoch": epoch, "phase": "unfrozen", "valid_accuracy": accuracy, "time_s": 2.5})
    if results:
        metrics = {"valid_accuracy": max(accuracies), "test_accuracy": 0.5}
        (folder / "results.json").write_text(json.dumps({"metrics": metrics, "elapsed_s": 9.0}))
    return folder


def test_find_runs_walks_nested_folders_but_not_into_a_run(tmp_path: Path) -> None:
    write_run(tmp_path / "a", [0.5, 0.7], results=True)
    write_run(tmp_path / "study" / "trial-0000", [0.6])
    write_run(tmp_path / "a" / "eval" / "copy", [0.1])  # inside a run: not a run of its own
    write_run(tmp_path / ".hidden", [0.1])
    write_run(tmp_path / "mlruns" / "1" / "0a1b" / "artifacts" / "run", [0.7])  # --log mlflow's copy of a's files
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.yaml").write_text("data: [unclosed")
    runs = find_runs(tmp_path)  # the broken one is skipped with a warning, the others are listed
    assert [r.name for r in runs] == ["a", "study/trial-0000"]
    done, stopped = runs
    assert (done.status, done.valid, done.test, done.time_s) == ("done", 0.7, 0.5, 9.0)
    assert (stopped.status, stopped.valid, stopped.test, stopped.time_s) == ("stopped", 0.6, None, 2.5)
    assert done.data == "photos (0.1)" and done.epochs_label == "4" and done.date == datetime(2026, 11, 20, 10)
    assert [r.name for r in find_runs(tmp_path / "a")] == ["a"]  # a run folder given itself


def test_a_run_being_written_shows_as_running(tmp_path: Path) -> None:
    write_run(tmp_path, [0.4])
    with run_lock(tmp_path):
        assert read_run(tmp_path).status == "running"
    assert read_run(tmp_path).status == "stopped"


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        find_runs(tmp_path / "nope")


def summary(
    name: str, valid: float | None, *, monitor: str = "valid_accuracy", time_s: float | None = 1.0
) -> RunSummary:
    return RunSummary(name, Path(name), None, "d", "finetune", "b", 64, 1, 6, monitor, valid, None, time_s, "done")


def test_sort_orders() -> None:
    runs = [summary("b", 0.8, time_s=5.0), summary("a", None, time_s=None), summary("c", 0.9, time_s=3.0)]
    assert [r.name for r in sort_runs(runs, "valid")] == ["c", "b", "a"]  # best first; no score last
    assert [r.name for r in sort_runs(runs, "valid", reverse=True)] == ["b", "c", "a"]
    assert [r.name for r in sort_runs(runs, "time")] == ["c", "b", "a"]  # fastest first
    assert [r.name for r in sort_runs(runs, "name")] == ["a", "b", "c"]
    losses = [summary("x", 0.3, monitor="valid_loss"), summary("y", 0.2, monitor="valid_loss")]
    assert [r.name for r in sort_runs(losses, "valid")] == ["y", "x"]  # a loss: lowest is best
    with pytest.raises(ConfigError, match="`sort` must be one of"):
        sort_runs(runs, "speed")


def test_config_differences_name_what_changed_and_ignore_where_it_was_written() -> None:
    a = {"model.image_size": 32, "train.lr": 0.002, "out": "runs/a", "train.heads": []}
    b = {"model.image_size": 64, "train.lr": 0.002, "out": "runs/b", "train.ema": 0.999, "train.heads": []}
    assert config_differences([a, b]) == {"model.image_size": [32, 64], "train.ema": [None, 0.999]}


def test_a_run_of_the_previous_release_still_lists(tmp_path: Path) -> None:
    """config.yaml with one flat `train` section and `model.name`, epoch rows without their split, `accuracy`."""
    folder = tmp_path / "old"
    folder.mkdir()
    legacy = {
        "data": {"source": "/data/photos"},
        "model": {"name": "efficientnet_lite0", "image_size": 112},
        "train": {"method": "finetune", "epochs": 6, "freeze_epochs": 1, "lr": 0.002, "heads": [], "views": 1,
                  "tta": False, "batch_size": 64, "monitor": "accuracy", "seed": 42},
        "out": None, "name": None,
    }  # fmt: skip
    save_yaml(legacy, folder / "config.yaml")
    (folder / "run.json").write_text(json.dumps({"started": "2026-11-20T10:00:00", "monitor": "accuracy"}))
    (folder / "metrics.csv").write_text("epoch,phase,valid_loss,accuracy\n1,frozen,0.9,0.61\n2,unfrozen,0.5,0.83\n")
    run = read_run(folder)
    assert (run.backbone, run.image_size, run.epochs_label) == ("efficientnet_lite0", 112, "1+6")
    assert run.monitor == "valid_accuracy" and run.valid == 0.83 and run.status == "stopped"


def test_an_ensembles_row_names_its_members(tmp_path: Path) -> None:
    one = read_run(write_run(tmp_path / "one", [0.8], members=1))
    two = read_run(write_run(tmp_path / "two", [0.8], members=2))
    assert (one.backbone, two.backbone) == ("efficientnet_lite0", "efficientnet_lite0 x2")
