"""`visiontune train` options the README promises, run in-process on tiny real data with a tiny MLP:
`--config` with typed options overriding it, `--resume`, `--balance sampler` drawing balanced batches."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import write_class_folders
from visiontune.cli.main import app
from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
from visiontune.data.datamodule import DataModule
from visiontune.training.callbacks import Callback
from visiontune.training.pipeline import train

MLP = ["--method", "scratch", "--backbone", "mlp", "--image-size", "28", "--workers", "0", "--augment", "none"]
MLP += ["--freeze-epochs", "0"]


def _train(*args: str) -> Any:
    result = CliRunner().invoke(app, ["train", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    return result


def _epochs(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def tiny(tmp_path: Path, fashion: dict[str, np.ndarray]) -> Path:
    return write_class_folders(tmp_path / "data", fashion, per_class=12)


def test_config_file_with_typed_options_overriding_it(tiny: Path, tmp_path: Path) -> None:
    config = {
        "data": {"source": str(tiny), "valid_pct": 0.25, "seed": 7},
        "model": {"backbone": "mlp", "image_size": 28},
        "train": {"method": "scratch", "num_workers": 0, "augment": "none"},
        "finetune": {"epochs": 3, "freeze_epochs": 0, "batch_size": 8, "lr": 0.01},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    _train("--config", str(tmp_path / "run.yaml"), "--epochs", "1", "--lr", "0.003", "--out", str(tmp_path / "run"))
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["finetune"]["epochs"] == 1 and resolved["finetune"]["lr"] == 0.003  # typed: they win
    assert resolved["finetune"]["batch_size"] == 8 and resolved["data"]["seed"] == 7  # the file's, kept
    assert resolved["model"]["backbone"] == "mlp" and resolved["data"]["source"] == str(tiny)
    assert len(_epochs(tmp_path / "run")) == 1


class _StopAfterFirstEpoch(Callback):
    def after_epoch(self, trainer: Any, metrics: dict[str, Any]) -> None:
        raise KeyboardInterrupt


def test_resume_through_the_cli_continues_the_stopped_run(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = RunConfig(
        DataConfig(source=str(tiny), valid_pct=0.25),
        ModelConfig(backbone="mlp", image_size=28),
        TrainConfig(method="scratch", num_workers=0, augment="none"),
        FinetuneConfig(epochs=2, freeze_epochs=0, batch_size=8),
        out=str(run),
    )
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_StopAfterFirstEpoch()])
    first = _epochs(run)
    assert len(first) == 1 and not (run / "model").exists()
    _train("--resume", str(run))
    resumed = _epochs(run)
    assert [r["epoch"] for r in resumed] == ["1", "2"] and resumed[0] == first[0]  # epoch 1 kept, not redone
    assert (run / "model" / "bundle.json").is_file()


def test_balance_sampler_draws_balanced_batches(tmp_path: Path, fashion: dict, monkeypatch: Any) -> None:
    data = write_class_folders(tmp_path / "data", fashion, classes=(0, 1), per_class=40)
    for extra in sorted((data / "trouser").iterdir())[8:]:  # 40 t-shirts, 8 trousers: 5x
        extra.unlink()
    loaders = []
    original = DataModule.train_dataloader

    def recorded(self: DataModule, **kwargs: Any) -> Any:
        loaders.append(original(self, **kwargs))
        return loaders[-1]

    monkeypatch.setattr(DataModule, "train_dataloader", recorded)
    _train(str(data), *MLP, "--epochs", "1", "--batch-size", "8", "--balance", "sampler", "--out", str(tmp_path / "r"))
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["balance"] == "sampler" and info["imbalance_ratio"] > 3 and not info.get("class_weights")
    (loader,) = loaders
    targets = loader.dataset.targets
    drawn = Counter()
    for epoch in range(10):
        loader.sampler.set_epoch(epoch)
        drawn.update(int(targets[i]) for i, _ in loader.sampler)
    assert 0.4 < drawn[1] / sum(drawn.values()) < 0.6  # trousers are a sixth of the images, half of what is drawn
