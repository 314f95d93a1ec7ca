from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from torch import nn

from visiontune.training import checkpoint as ckpt_mod
from visiontune.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[2].parameters()}], lr=1e-2)
    for _ in range(3):
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
    return model, opt


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path: Path) -> None:
    model, opt = _trained()
    np.random.seed(3)
    rng = capture_rng()
    expected = (torch.rand(3), np.random.rand(2))
    save_checkpoint(
        tmp_path / "c.safetensors", Checkpoint(model.state_dict(), opt.state_dict(), state={"epoch": 4}, rng=rng)
    )
    loaded = load_checkpoint(tmp_path / "c.safetensors")
    assert loaded.state == {"epoch": 4}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model[key], value)
    fresh = torch.optim.AdamW(
        [{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[2].parameters()}], lr=1e-2
    )
    fresh.load_state_dict(loaded.optimizer)
    as_json = json.loads(json.dumps(opt.state_dict()["param_groups"]))  # tuples (betas) come back as lists
    assert fresh.state_dict()["param_groups"] == as_json
    for pid, values in opt.state_dict()["state"].items():
        for name, tensor in values.items():
            assert torch.equal(fresh.state_dict()["state"][pid][name], tensor)
    restore_rng(loaded.rng)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(2), expected[1])


def test_file_is_plain_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, opt = _trained()
    save_checkpoint(tmp_path / "c.safetensors", Checkpoint(model.state_dict(), opt.state_dict(), rng=capture_rng()))
    tensors = load_file(str(tmp_path / "c.safetensors"))
    assert "model.0.weight" in tensors and any(k.startswith("optim.") for k in tensors)


# what a full disk raises: Python's OSError, or safetensors' own error (its Rust writer names only the errno)
FULL_DISK_ERRORS = [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
]


@pytest.mark.parametrize("error", FULL_DISK_ERRORS, ids=["OSError", "SafetensorError"])
def test_failed_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    model, _ = _trained()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, Checkpoint(model.state_dict(), state={"epoch": 1}))

    def full_disk(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(ckpt_mod, "save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"disk full while writing a checkpoint .* free space and resume"):
        save_checkpoint(path, Checkpoint(model.state_dict(), state={"epoch": 2}))
    assert load_checkpoint(path).state == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temp file left behind


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_full_disk_while_writing_any_output_is_an_output_error(tmp_path: Path) -> None:
    from visiontune.errors import OutputError
    from visiontune.io import atomic_path

    (tmp_path / "a.json").write_text("old")
    for error in FULL_DISK_ERRORS:
        with pytest.raises(OutputError, match=r"a\.json: disk full") as caught, atomic_path(tmp_path / "a.json"):
            raise error
        assert caught.value.exit_code == 7 and caught.value.disk_full
    assert (tmp_path / "a.json").read_text() == "old" and len(list(tmp_path.iterdir())) == 1
