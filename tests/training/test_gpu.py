"""The GPU paths the README promises: bf16 (fp16 with loss scaling on GPUs without bf16) and channels-last memory.

Marked `gpu`; they run wherever CUDA is present and skip, saying why, elsewhere (`pytest -m gpu` selects them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import write_class_folders
from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
from visiontune.inference import resolve_precision
from visiontune.training.events import Callback
from visiontune.training.pipeline import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: bf16, fp16 and channels-last paths"),
]


class Watch(Callback):
    """Records, during training, what the model computes in and how its weights are laid out."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def before_epoch(self, trainer: Any) -> None:
        model = trainer.raw_model
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        self.seen["conv_weight_channels_last"] = conv.weight.is_contiguous(memory_format=torch.channels_last)
        self.seen["precision"] = trainer.precision
        self.seen["scaler"] = trainer.accelerator.scaler
        self.seen["device"] = trainer.device.type
        if "hook" not in self.seen:
            self.seen["hook"] = conv.register_forward_hook(lambda m, i, out: self.seen.setdefault("dtype", out.dtype))

    def after_batch(self, trainer: Any, loss: float, size: int) -> None:
        scaler = trainer.accelerator.scaler
        if scaler is not None:
            self.seen.setdefault("scales", []).append(float(scaler.get_scale()))


@pytest.fixture
def tiny(tmp_path: Path, fashion: dict[str, np.ndarray]) -> Path:
    return write_class_folders(tmp_path / "data", fashion, per_class=24)


def _run(data: Path, out: Path, precision: str) -> tuple[Any, dict[str, Any]]:
    watch = Watch()
    config = RunConfig(
        DataConfig(source=str(data), valid_pct=0.25),
        ModelConfig(backbone="efficientnet_lite0", image_size=64),
        TrainConfig(num_workers=0, precision=precision),
        FinetuneConfig(epochs=1, freeze_epochs=1, batch_size=16),
        out=str(out),
    )
    result = train(config, callbacks=[watch])
    return result, watch.seen


def test_auto_precision_is_bf16_on_gpus_that_have_it_and_the_weights_are_channels_last(
    tiny: Path, tmp_path: Path
) -> None:
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert resolve_precision("auto") == expected
    result, seen = _run(tiny, tmp_path / "auto", "auto")
    assert seen["device"] == "cuda" and seen["precision"] == expected
    assert seen["dtype"] == (torch.bfloat16 if expected == "bf16" else torch.float16)  # autocast ran the convs
    assert seen["conv_weight_channels_last"]  # channels-last by default on a GPU
    assert result.metrics["valid_accuracy"] > 0.6 and math.isfinite(result.metrics["valid_loss"])


def test_fp16_trains_with_loss_scaling(tiny: Path, tmp_path: Path) -> None:
    result, seen = _run(tiny, tmp_path / "fp16", "fp16")
    assert seen["precision"] == "fp16" and seen["dtype"] == torch.float16
    assert isinstance(seen["scaler"], torch.amp.GradScaler) and seen["scales"]  # the loss is scaled...
    assert all(math.isfinite(s) and s > 1.0 for s in seen["scales"])  # ...by a finite factor above 1
    assert result.metrics["valid_accuracy"] > 0.6 and math.isfinite(result.metrics["valid_loss"])


def test_bf16_needs_no_loss_scaling(tiny: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    _, seen = _run(tiny, tmp_path / "bf16", "bf16")
    assert seen["dtype"] == torch.bfloat16 and seen["scaler"] is None
