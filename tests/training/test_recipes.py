"""Training options that change what is learned: accumulation, --lr auto, early stopping, imbalance."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import write_class_folders
from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
from visiontune.training.callbacks import Callback
from visiontune.training.pipeline import train
from visiontune.training.trainer import Trainer


def _run(data: Path, out: Path, *, model: str = "mlp", **finetune: object) -> RunConfig:
    defaults = {"epochs": 1, "freeze_epochs": 0, "batch_size": 16, "lr": 3e-3, "label_smoothing": 0.0}
    return RunConfig(
        DataConfig(source=str(data), valid_pct=0.25),
        ModelConfig(backbone=model, image_size=28, drop_rate=0.0),
        TrainConfig(method="scratch", num_workers=0, augment="none"),
        FinetuneConfig(**{**defaults, **finetune}),  # type: ignore[arg-type]
        out=str(out),
    )


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "last.safetensors"))


@pytest.fixture
def tiny(tmp_path: Path, fashion: dict) -> Path:
    return write_class_folders(tmp_path / "data", fashion, per_class=24)  # 54 train / 18 valid


def test_accumulating_two_batches_of_8_equals_one_batch_of_16(tiny: Path, tmp_path: Path) -> None:
    whole = train(_run(tiny, tmp_path / "b16", epochs=2, batch_size=16)).run_dir
    split = train(_run(tiny, tmp_path / "b8x2", epochs=2, batch_size=8, accumulate=2)).run_dir
    single = train(_run(tiny, tmp_path / "b8", epochs=2, batch_size=8)).run_dir
    a, b, c = _weights(whole), _weights(split), _weights(single)
    model_keys = [k for k in a if k.startswith("model.")]
    assert model_keys
    for key in model_keys:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    # ...and not because training did nothing: plain batches of 8 take twice the steps and differ.
    assert any(not torch.allclose(a[k], c[k], atol=1e-4) for k in model_keys)


def test_lr_auto_runs_the_range_test_and_records_the_rate(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found, peaks = [], []
    lr_find = Trainer.lr_find
    monkeypatch.setattr(Trainer, "lr_find", lambda self, **kw: found.append(lr_find(self, **kw)) or found[-1])

    class Peak(Callback):
        def before_epoch(self, trainer: Trainer) -> None:
            peaks.append(max(group["max_lr"] for group in trainer.optimizer.param_groups))

    result = train(_run(tiny, tmp_path / "auto", lr=None), callbacks=[Peak()])
    lr = yaml.safe_load((result.run_dir / "config.yaml").read_text())["finetune"]["lr"]
    (curve,) = found
    assert lr == pytest.approx(curve.suggestion, rel=1e-2)  # the range test's suggestion, recorded...
    assert peaks == [pytest.approx(lr)]  # ...and the rate that ran
    losses = curve.losses  # smoothed
    at = curve.lrs.index(curve.suggestion)
    assert at < int(np.argmin(losses)) and losses[at] < losses[0]  # where the loss falls, before it blows up
    assert (result.run_dir / "lr_find.png").stat().st_size > 10_000
    assert len(_rows(result.run_dir)) == 1


def test_early_stopping_ends_a_run_that_stopped_improving(tiny: Path, tmp_path: Path) -> None:
    # a learning rate this small can't move the validation accuracy: the run stops after `patience` epochs
    result = train(_run(tiny, tmp_path / "stop", epochs=20, lr=1e-9, patience=2))
    rows = _rows(result.run_dir)
    assert len(rows) == 3
    assert result.best_epoch == 1


def test_imbalanced_data_monitors_balanced_accuracy_and_weights_the_loss(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "data", fashion, classes=(0, 1), per_class=40)
    for extra in sorted((data / "trouser").iterdir())[8:]:  # 40 t-shirts, 8 trousers
        extra.unlink()
    result = train(_run(data, tmp_path / "imb", model="small_cnn"))
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["imbalance_ratio"] > 3 and run["monitor"] == "valid_balanced_accuracy"
    assert result.monitor.name == "valid_balanced_accuracy" and result.monitor.mode == "max"
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["finetune"]["balance"] == "auto" and config["train"]["monitor"] == "valid_balanced_accuracy"
    assert run["balance"] == "weights"
    shirt, trouser = run["class_weights"]  # classes sorted: t-shirt_top, trouser
    assert trouser > 3 * shirt


def test_fine_tune_peaks_at_lr_without_a_frozen_epoch_and_at_half_after_one(tiny: Path, tmp_path: Path) -> None:
    """The default (no frozen epoch) trains every layer at `lr`; after a head-only epoch they peak at lr / 2."""
    peaks: list[float] = []

    class Peak(Callback):
        def before_epoch(self, trainer: Trainer) -> None:
            peaks.append(max(group["max_lr"] for group in trainer.optimizer.param_groups))

    def fine_tune(name: str, freeze_epochs: int) -> None:
        config = _run(tiny, tmp_path / name, model="small_cnn", lr=4e-3, freeze_epochs=freeze_epochs)
        train(config.replace("train", method="finetune").replace("model", pretrained=False), callbacks=[Peak()])

    fine_tune("straight", 0)
    assert peaks == [pytest.approx(4e-3)]
    peaks.clear()
    fine_tune("after-head", 1)
    assert peaks == [pytest.approx(4e-3), pytest.approx(2e-3)]
