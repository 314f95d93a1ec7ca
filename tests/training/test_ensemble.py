"""--members N: members trained with their own seeds and folders, one ensemble bundle, resume, overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import write_class_folders
from visiontune.bundle import load_bundle
from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
from visiontune.models import Ensemble
from visiontune.runs.folder import RunFolder
from visiontune.runs.lock import LOCK_FILE
from visiontune.training.checkpoint import load_checkpoint
from visiontune.training.events import Callback
from visiontune.training.pipeline import resume_config, train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, fashion: dict[str, np.ndarray]) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("ensemble") / "data", fashion, per_class=16)


def _config(data: Path, out: Path, *, members: int = 2, epochs: int = 1) -> RunConfig:
    return RunConfig(
        DataConfig(source=str(data), valid_pct=0.25),
        ModelConfig(image_size=32),
        TrainConfig(num_workers=0),
        FinetuneConfig(epochs=epochs, batch_size=12, lr=2e-3, members=members),
        out=str(out),
    )


class _CtrlCAtEpoch(Callback):
    """Ctrl-C once `count` epochs (over all members) have ended and been checkpointed."""

    def __init__(self, count: int) -> None:
        self.count, self.seen = count, 0

    def after_epoch(self, trainer: object, metrics: dict) -> None:
        self.seen += 1
        if self.seen == self.count:
            raise KeyboardInterrupt


def _rows(folder: Path) -> int:
    return len((folder / "metrics.csv").read_text().strip().splitlines()) - 1


def _kept_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The model weights of the checkpoint a member's run.json says it kept."""
    kept = json.loads((folder / "run.json").read_text())["kept"]["checkpoint"]
    return load_checkpoint(folder / "checkpoints" / f"{kept}.safetensors").model


def test_members_train_with_their_own_seeds_and_the_bundle_averages_them(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(_config(data, out))
    model, meta = load_bundle(result.bundle_dir)
    assert isinstance(model, Ensemble) and len(model.members) == 2
    assert [m["seed"] for m in result.members] == [42, 43] and result.config.finetune.members == 2
    assert (out / "members" / "2" / "checkpoints").is_dir() and _rows(out / "members" / "2") == 1
    for member, folder in zip(model.members, (out, out / "members" / "2"), strict=True):
        saved = _kept_weights(folder)  # each member in the bundle is that member's kept checkpoint
        for name, tensor in member.state_dict().items():
            torch.testing.assert_close(tensor, saved[name])
    first, second = model.members
    assert not torch.equal(first.head.fc.weight, second.head.fc.weight)  # seeds 42 and 43: two different models
    results = json.loads((out / "results.json").read_text())
    assert [m["member"] for m in results["members"]] == [1, 2] and meta.training["members"] == results["members"]
    assert meta.calibration.detector is not None  # the unknown detector reads the ensemble's embeddings
    RunFolder(out).claim(overwrite=True)  # what --overwrite does: members/ is the run's, and goes with it
    assert [p.name for p in out.iterdir() if p.name != LOCK_FILE] == []


def test_an_interrupted_ensemble_resumes_in_the_member_it_was_in(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match="continue with visiontune train --resume"):
        train(_config(data, out, epochs=2), callbacks=[_CtrlCAtEpoch(3)])  # member 1's two epochs, member 2's first
    first_member = _kept_weights(out)
    resumed = train(resume_config(out), resume=out)
    assert _rows(out) == 2 and _rows(out / "members" / "2") == 2  # member 1 not trained again; member 2 finished
    model, _ = load_bundle(resumed.bundle_dir)
    assert isinstance(model, Ensemble) and [m["seed"] for m in resumed.members] == [42, 43]
    for name, tensor in model.members[0].state_dict().items():  # member 1 as the first session left it
        torch.testing.assert_close(tensor, first_member[name])
