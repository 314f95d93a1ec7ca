"""Facts about the machine that defaults depend on: usable cores, accelerators, library versions."""

from __future__ import annotations

import math
import os
import platform
import sys
from importlib import metadata


def available_cpus() -> int:
    """Cores this process may use (respects CPU affinity and container limits where the OS reports them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def library_versions(
    names: tuple[str, ...] = ("visiontune", "torch", "torchvision", "timm", "numpy", "pillow"),
) -> dict:
    """Installed versions of the libraries a result depends on, recorded with every run and bundle."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


CPU_PIXELS_PER_THREAD = 2 * 224 * 224  # input pixels per forward pass and thread that run fastest on a CPU


def inference_batch_size(device_type: str, image_size: tuple[int, int] = (224, 224), threads: int | None = None) -> int:
    """Images per forward pass when only predicting: 128 on a GPU; on a CPU, about 100k pixels per thread.

    Small CPU batches stay in cache, so the best batch shrinks as images grow. EfficientNet-Lite0,
    channels-last, inference mode, 2 threads on a 2-core VM, images/s by batch:
    64 px: 270 (8), 397 (16), 551 (32), 634 (64), 507 (128); 96 px: 243 (8), 281 (16), 213 (32);
    160 px: 85 (4), 112 (8), 75 (16); 224 px: 47 (4), 42 (8), 38 (16). The best batch holds
    150-260k pixels; with 1 thread 100-150k. The batch is the power of two nearest (in log scale)
    to `threads` x `CPU_PIXELS_PER_THREAD` / pixels per image, from 1 to 256.
    """
    if device_type == "cuda":
        return 128
    pixels = max(1, image_size[0] * image_size[1])
    images = (threads or available_cpus()) * CPU_PIXELS_PER_THREAD / pixels
    return min(256, 2 ** round(math.log2(max(images, 1.0))))


def evaluation_batch_size(device_type: str, image_size: tuple[int, int], training_batch: int, threads: int) -> int:
    """Images per evaluation batch inside a training run: the inference batch on a CPU (no gradients,
    so cache-sized batches win: 16 at 96 px on two threads ran 1.4x the images/s of training's 64);
    on a GPU at least the training batch, which fits since evaluation keeps no activations."""
    if device_type == "cuda":
        return max(training_batch, inference_batch_size("cuda"))
    return inference_batch_size("cpu", image_size, threads)


def hardware() -> dict[str, object]:
    """The machine a run ran on, for run.json: processor, usable cores and GPUs."""
    import torch

    info: dict[str, object] = {"machine": platform.machine(), "processor": platform.processor() or None}
    info["cpus"] = available_cpus()
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info
