from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import write_class_folders
from visiontune.bundle import load_bundle
from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
from visiontune.runs import RunExistsError
from visiontune.runs.lock import RunLockedError
from visiontune.training.callbacks import Callback
from visiontune.training.pipeline import TrainResult, resume_config, train

REPO = Path(__file__).resolve().parents[2]
SCORES = ("train_loss", "valid_loss", "valid_accuracy", "valid_balanced_accuracy", "lr")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, fashion: dict) -> Path:
    """3 classes x 24 real Fashion-MNIST images (shared, read-only)."""
    return write_class_folders(tmp_path_factory.mktemp("tiny") / "data", fashion, per_class=24)


def _config(data: Path, out: Path, augment: str = "standard", **finetune: object) -> RunConfig:
    defaults = {"epochs": 2, "freeze_epochs": 1, "batch_size": 16, "lr": 3e-3}
    return RunConfig(
        DataConfig(source=str(data), valid_pct=0.25),
        ModelConfig(backbone="small_cnn", image_size=28),
        TrainConfig(method="scratch", num_workers=0, augment=augment),
        FinetuneConfig(**{**defaults, **finetune}),  # type: ignore[arg-type]
        out=str(out),
    )


def _scores(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return [{k: row[k] for k in ("epoch", *SCORES)} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def default_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """`_config`'s run, uninterrupted: 1 + 2 epochs in one scratch phase (shared, read-only)."""
    return train(_config(tiny, tmp_path_factory.mktemp("default") / "run"))


def test_run_folder_and_bundle(default_run: TrainResult) -> None:
    result = default_run
    run = result.run_dir
    for name in (
        "config.yaml",
        "run.json",
        "classes.json",
        "splits.csv",
        "metrics.csv",
        "metrics.jsonl",
        "history.png",
    ):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.safetensors").is_file() and (run / "checkpoints" / "best.safetensors").is_file()
    assert [r["epoch"] for r in _scores(run)] == ["1", "2", "3"]
    info = json.loads((run / "run.json").read_text())
    assert len(info["data_manifest_sha256"]) == 64 and torch.__version__.startswith(info["versions"]["torch"])
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["backbone"] == "small_cnn"
    model, meta = load_bundle(run)
    assert meta.classes == ["sneaker", "t-shirt_top", "trouser"]
    assert meta.preprocessing.image_size == (28, 28)
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 3)
    assert result.monitor.name == "valid_accuracy" and result.config.model.image_size == 28
    metrics = {"loss", "accuracy", "balanced_accuracy", "error_rate", "macro_f1", "ece"}
    assert {f"valid_{m}" for m in metrics} <= set(result.metrics)  # the set every method writes


def test_same_command_twice_gives_the_same_metrics(tiny: Path, tmp_path: Path) -> None:
    a = train(_config(tiny, tmp_path / "a", augment="strong"))
    b = train(_config(tiny, tmp_path / "b", augment="strong"))
    assert _scores(a.run_dir) == _scores(b.run_dir)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from visiontune.config import RunConfig, load_yaml
    from visiontune.training.events import Callback
    from visiontune.training.pipeline import train

    class KillMidEpoch(Callback):
        def __init__(self):
            self.batches = 0
        def after_batch(self, trainer, loss, size):
            self.batches += 1
            if trainer.epoch == 1 and self.batches % 3 == 0:  # inside the second of three epochs
                os.kill(os.getpid(), signal.SIGKILL)

    train(RunConfig.from_dict(load_yaml(sys.argv[1])), callbacks=[KillMidEpoch()])
    """
)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(
    tiny: Path, tmp_path: Path, default_run: TrainResult
) -> None:
    config = _config(tiny, tmp_path / "killed")  # default_run's: it is the uninterrupted run
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config.to_dict()))
    (tmp_path / "killer.py").write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, str(tmp_path / "killer.py"), str(tmp_path / "cfg.yaml")], env=env)
    assert proc.returncode == -9
    killed = tmp_path / "killed"
    assert [r["epoch"] for r in _scores(killed)] == ["1"]
    assert not (killed / "model").exists()

    resumed = train(resume_config(killed), resume=killed)  # epoch 2 again from its start, then epoch 3
    straight = default_run
    assert _scores(resumed.run_dir) == _scores(straight.run_dir)
    assert resumed.metrics == straight.metrics


def test_fine_tune_freezes_then_unfreezes_pretrained_backbone(tiny: Path, tmp_path: Path) -> None:
    config = RunConfig(
        DataConfig(source=str(tiny), valid_pct=0.25),
        ModelConfig(backbone="efficientnet_lite0", image_size=32),
        TrainConfig(num_workers=0),
        FinetuneConfig(epochs=1, freeze_epochs=1, batch_size=16),
        out=str(tmp_path / "ft"),
    )
    result = train(config)
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").read_text().splitlines()))
    assert [r["phase"] for r in rows] == ["frozen", "unfrozen"]
    params = json.loads((result.run_dir / "run.json").read_text())["parameters"]
    assert params["total"] > 3_000_000


def test_resume_of_a_folder_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from visiontune.training.checkpoint import CheckpointError

    (tmp_path / "r").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.yaml"):
        resume_config(tmp_path / "r")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "r" / "config.yaml")
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        resume_config(tmp_path / "r")


def test_an_existing_run_is_never_trained_over_silently(tiny: Path, tmp_path: Path) -> None:
    first = train(_config(tiny, tmp_path / "run", epochs=1, freeze_epochs=0))
    with pytest.raises(RunExistsError, match="--resume"):
        train(_config(tiny, tmp_path / "run", epochs=1, freeze_epochs=0))
    (first.run_dir / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match=r"did not write \(notes\.txt\)"):
        train(_config(tiny, tmp_path / "run", epochs=2, freeze_epochs=0), overwrite=True)
    assert (first.run_dir / "notes.txt").read_text() == "mine" and len(_scores(first.run_dir)) == 1
    (first.run_dir / "notes.txt").unlink()
    train(_config(tiny, tmp_path / "run", epochs=2, freeze_epochs=0), overwrite=True)
    assert len(_scores(first.run_dir)) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(RunExistsError, match=r"thesis\.tex"):
            train(_config(tiny, tmp_path / "other", epochs=1, freeze_epochs=0), overwrite=overwrite)
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["thesis.tex"]  # not even a lock file


def test_a_second_process_is_refused_while_a_run_folder_is_written(tiny: Path, tmp_path: Path) -> None:
    """Two trainings into one --out would interleave checkpoints; the second stops before touching anything."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}\b.*another --out"):
            train(_config(tiny, out), overwrite=True)
        assert (out / ".lock").is_file() and not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    result = train(_config(tiny, out, epochs=1, freeze_epochs=0))  # the OS dropped the dead holder's lock
    assert result.bundle_dir.is_dir()


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from visiontune.runs.lock import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


class _SlowThenCtrlC(Callback):
    """Epoch 1 takes `pause` seconds longer; Ctrl-C at the start of epoch 2 (after epoch 1's checkpoint), or of
    epoch 1 with a negative pause."""

    def __init__(self, pause: float) -> None:
        self.pause = pause

    def before_epoch(self, trainer: object) -> None:
        if self.pause < 0:  # Ctrl-C at once
            raise KeyboardInterrupt
        if trainer.epoch == 0:  # type: ignore[attr-defined]
            time.sleep(self.pause)
        else:
            raise KeyboardInterrupt


def test_ctrl_c_says_how_to_resume(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match=rf"continue with visiontune train --resume {out}$"):
        train(_config(tiny, out, epochs=2, freeze_epochs=0), callbacks=[_SlowThenCtrlC(0.0)])
    with pytest.raises(KeyboardInterrupt, match="before the first epoch ended: nothing to resume"):
        train(_config(tiny, out, epochs=2, freeze_epochs=0), callbacks=[_SlowThenCtrlC(-1)], overwrite=True)


def test_elapsed_counts_every_session_of_a_resumed_run(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny, out, epochs=2, freeze_epochs=0), callbacks=[_SlowThenCtrlC(4.0)])
    resumed = train(resume_config(out), resume=out)
    assert [r["epoch"] for r in _scores(out)] == ["1", "2"]
    assert resumed.elapsed_s >= 4.0  # the first session's epoch is in it
    assert json.loads((out / "results.json").read_text())["elapsed_s"] == pytest.approx(resumed.elapsed_s, abs=1.0)
