"""Which epoch a fine-tuning run bundles: the schedule's end unless an earlier epoch is better beyond noise."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_class_folders
from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, Monitor, RunConfig, TrainConfig
from visiontune.evaluation.intervals import wilson_interval
from visiontune.runs.folder import RunFolder
from visiontune.training.callbacks import Checkpointer
from visiontune.training.finetune import kept_checkpoint
from visiontune.training.pipeline import train

ACCURACY = Monitor("valid_accuracy", "max")


def _scored(scores: list[float], monitor: Monitor = ACCURACY) -> Checkpointer:
    """A Checkpointer that saw these validation scores, epoch by epoch (nothing written: not the main process)."""
    checkpointer = Checkpointer(RunFolder("unused"), monitor)
    trainer = SimpleNamespace(is_main=False)
    for epoch, score in enumerate(scores, start=1):
        checkpointer.after_epoch(trainer, {"epoch": epoch, monitor.name: score})  # type: ignore[arg-type]
    return checkpointer


def test_the_schedules_end_is_kept_when_an_earlier_peak_is_within_noise() -> None:
    low, _ = wilson_interval(552, 600)  # 0.920 on 600 images: about 0.896 to 0.939
    inside, outside = low + 0.002, low - 0.002
    kept, why = kept_checkpoint(_scored([0.85, 0.92, inside]), ACCURACY, 600, early_stopped=False)
    assert kept == "last" and "within noise" in why and "epoch 2" in why
    kept, why = kept_checkpoint(_scored([0.85, 0.92, outside]), ACCURACY, 600, early_stopped=False)
    assert kept == "best" and "beyond noise" in why
    # the same gap on 60 images is noise; on 6,000 it is not
    assert kept_checkpoint(_scored([0.85, 0.92, 0.88]), ACCURACY, 60, early_stopped=False)[0] == "last"
    assert kept_checkpoint(_scored([0.85, 0.92, 0.88]), ACCURACY, 6000, early_stopped=False)[0] == "best"


def test_the_best_epoch_is_kept_when_the_end_is_no_annealed_end_or_has_no_interval() -> None:
    scores = [0.85, 0.92, 0.915]
    assert kept_checkpoint(_scored(scores), ACCURACY, 600, early_stopped=True)[0] == "best"
    loss = Monitor("valid_loss", "min")
    assert kept_checkpoint(_scored([0.5, 0.30, 0.31], loss), loss, 600, early_stopped=False)[0] == "best"
    kept, why = kept_checkpoint(_scored([0.85, 0.90, 0.93]), ACCURACY, 600, early_stopped=False)
    assert kept == "best" and "is the last" in why  # the last is the best: one checkpoint, no choice


def test_the_checkpointers_scores_survive_a_resume() -> None:
    checkpointer = _scored([0.8, 0.9, 0.88])
    again = Checkpointer(RunFolder("unused"), ACCURACY)
    again.load_state_dict(checkpointer.state_dict())
    assert (again.best, again.best_epoch, again.last, again.last_epoch) == (0.9, 2, 0.88, 3)
    older = Checkpointer(RunFolder("unused"), ACCURACY)
    older.load_state_dict({"best": 0.9, "best_epoch": 2})  # a checkpoint of an earlier release
    assert kept_checkpoint(older, ACCURACY, 600, early_stopped=False)[0] == "best"


@pytest.mark.parametrize(("scripted", "expected"), [((0.5, 0.9, 0.85), "last"), ((0.5, 0.9, 0.1), "best")])
def test_the_bundle_holds_the_kept_epochs_weights(
    tmp_path: Path, fashion: dict, monkeypatch, scripted: tuple[float, ...], expected: str
) -> None:
    """A real run whose validation scores are scripted (18 images: 0.85 is inside 0.9's interval, 0.1 is not)."""
    seen = iter(scripted)
    real = Checkpointer.after_epoch

    def scripted_scores(self, trainer, metrics):
        return real(self, trainer, {**metrics, "valid_accuracy": next(seen)})

    monkeypatch.setattr(Checkpointer, "after_epoch", scripted_scores)
    data = write_class_folders(tmp_path / "data", fashion, per_class=24)
    config = RunConfig(
        DataConfig(source=str(data), valid_pct=0.25),
        ModelConfig(backbone="small_cnn", image_size=28),
        TrainConfig(method="scratch", num_workers=0, monitor="valid_accuracy"),
        FinetuneConfig(epochs=3, freeze_epochs=0, batch_size=16, lr=3e-3),
        out=str(tmp_path / "run"),
    )
    result = train(config)
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["kept"]["checkpoint"] == expected and result.best_epoch == {"last": 3, "best": 2}[expected]
    bundled = load_file(run / "model" / "model.safetensors")
    kept = load_file(run / "checkpoints" / f"{expected}.safetensors")
    other = load_file(run / "checkpoints" / f"{ {'last': 'best', 'best': 'last'}[expected] }.safetensors")
    assert torch.equal(bundled["head.fc.weight"], kept["model.head.fc.weight"])
    assert not torch.equal(bundled["head.fc.weight"], other["model.head.fc.weight"])  # the epochs did differ
