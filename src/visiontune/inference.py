"""The one path from pixels to a model's outputs: device, precision, channels-last, batches.

Training's validation, `evaluate`, feature extraction, `predict` and `serve` all run images
through `Inference`, so the numbers a report prints are the ones the served model gives: the same
normalisation (uint8 batches scaled and normalised at once, on the device), the same memory
format and the same precision (fp32 on a CPU, where autocast is slower for these models; bf16, or
fp16 on GPUs without bf16, on CUDA).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from visiontune.config import PRECISIONS, check_choice
from visiontune.data.loader import Batch, ImageItems, image_loader, log_failures
from visiontune.data.transforms import Preprocessing, normalize_batch
from visiontune.errors import ConfigError
from visiontune.system import inference_batch_size

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto`: the GPU when there is one; a named device must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu or auto")
    return resolved


def resolve_precision(requested: str = "auto", device: torch.device | None = None) -> str:
    """`auto`: bf16 on GPUs that support it, fp16 (with loss scaling when training) on older ones, fp32 on a CPU."""
    check_choice("precision", requested, PRECISIONS)
    if requested != "auto":
        return requested
    on_gpu = torch.cuda.is_available() if device is None else device.type == "cuda"
    if not on_gpu:
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(precision: str, device: torch.device) -> Any:
    """The autocast context for a resolved precision; a no-op for fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@dataclass
class Inference:
    """A model in evaluation mode on its device, and how its inputs are prepared.

    `forward` defaults to the model itself; feature extraction passes the pooled-embedding function.

    Example:
        >>> runner = Inference.create(model, model.preprocessing)  # doctest: +SKIP
        >>> logits = runner(pixels)  # (B, H, W, 3) uint8 -> (B, K) float32 on the CPU  # doctest: +SKIP
    """

    model: torch.nn.Module
    preprocessing: Preprocessing
    device: torch.device
    precision: str
    channels_last: bool = True  # inputs in channels-last memory (the model should be too)

    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        preprocessing: Preprocessing,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        channels_last: bool = True,
    ) -> Inference:
        resolved = resolve_device(device)
        model = model.eval().to(resolved)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return cls(model, preprocessing, resolved, resolve_precision(precision, resolved), channels_last)

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 (or already normalised float) -> (B, 3, H, W) normalised on the device."""
        images = normalize_batch(pixels.to(self.device, non_blocking=True), self.preprocessing)
        return images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    @torch.inference_mode()
    def __call__(
        self, pixels: torch.Tensor, *, forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Float32 outputs on the CPU for one batch of pixels."""
        with autocast(self.precision, self.device):
            return (forward or self.model)(self.images(pixels)).float().cpu()

    def loader(
        self, dataset: ImageItems, *, batch_size: int | None = None, num_workers: int | None = None
    ) -> torch.utils.data.DataLoader:
        """Batches of `dataset` sized for this device and image size (small on a CPU: they stay in cache)."""
        threads = torch.get_num_threads() if self.device.type == "cpu" else None
        size = batch_size or inference_batch_size(self.device.type, self.preprocessing.image_size, threads)
        return image_loader(dataset, batch_size=size, device=self.device, num_workers=num_workers)

    def batches(
        self,
        loader: torch.utils.data.DataLoader,
        *,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[Batch, torch.Tensor | None]]:
        """(batch, outputs) per batch of `loader`; outputs None when no input of the batch decoded."""
        for batch in loader:
            log_failures(loader.dataset, batch)
            outputs = None if batch.pixels is None else self(batch.pixels, forward=forward)
            if progress:
                progress(len(batch) + len(batch.failures))
            yield batch, outputs

    def outputs(
        self,
        loader: torch.utils.data.DataLoader,
        *,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Scored:
        """Outputs of every input that decoded, in dataset order, and the failures."""
        parts, indices, failures = [], [], []
        for batch, outputs in self.batches(loader, forward=forward, progress=progress):
            failures += batch.failures
            if outputs is not None:
                parts.append(outputs)
                indices.append(batch.indices)
        return Scored.gather(parts, indices, failures)


@dataclass
class Scored:
    """Outputs (N, D) of the inputs that decoded, their dataset positions (N,), sorted; and the failures."""

    outputs: torch.Tensor
    indices: torch.Tensor
    failures: list[tuple[int, str]]

    @classmethod
    def gather(cls, parts: list[torch.Tensor], indices: list[torch.Tensor], failures: list[tuple[int, str]]) -> Scored:
        if not parts:
            return cls(torch.empty(0, 0), torch.empty(0, dtype=torch.long), failures)
        outputs, order_of = torch.cat(parts), torch.cat(indices)
        order = torch.argsort(order_of)
        return cls(outputs[order], order_of[order], sorted(failures))
