"""Does the exported graph answer as the bundle does? Probabilities, accuracy and speed on real images.

The images are the run's own: its validation split as splits.csv recorded it (found where the
data was, or under `--data` when the folder has moved), which also gives an accuracy to compare;
without a run folder or its data, a few real images shipped with visiontune (Fashion-MNIST), which
still test the numbers, though not the accuracy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visiontune.bundle import BundleMeta
from visiontune.data.images import from_array, open_image
from visiontune.data.transforms import normalize_batch, pixel_transform
from visiontune.errors import DatasetError
from visiontune.predict import Predictor
from visiontune.runs.folder import RunFolder

log = logging.getLogger(__name__)

FALLBACK_IMAGES = 32
PARITY_TOLERANCE = 1e-4  # max abs difference of probabilities between PyTorch and onnxruntime


@dataclass
class CheckImages:
    """Images to compare on (paths or arrays), their class indices when known, and where they came from."""

    items: list[Any]
    labels: list[int] | None
    description: str


@dataclass
class Comparison:
    """Two models on the same images: the largest probability difference, top-1 agreement, both accuracies."""

    images: int
    max_abs_diff: float
    agreement: float
    reference_accuracy: float | None
    candidate_accuracy: float | None


def check_images(folder: Path, meta: BundleMeta, *, data: Path | None = None, split: str = "valid") -> CheckImages:
    """The run's `split` images (with labels) when they can be found, else a few bundled real images."""
    found = split_images(folder, meta, data=data, split=split)
    if found is not None:
        return found
    from visiontune.data.demo import load_subset

    arrays = load_subset()["test_images"][:FALLBACK_IMAGES]
    hint = "pass --data DIR (the folder it was trained on) to re-score it"
    return CheckImages(
        list(arrays), None, f"{len(arrays)} bundled Fashion-MNIST images (the run's {split} split not found: {hint})"
    )


def split_images(
    folder: Path, meta: BundleMeta, *, data: Path | None, split: str, limit: int | None = None
) -> CheckImages | None:
    """The images splits.csv assigned to `split`, spread over the list when `limit` is given; None if none exist."""
    found = RunFolder(folder.parent).split_files(split, data_root=meta.training.get("data_root"), data=data)
    if not found:
        return None
    rows = [(path, label) for path, label in found if label in meta.classes]
    if limit is not None and len(rows) > limit:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, limit).round().astype(int)]  # every class, in order
    present = [(path, meta.classes.index(label)) for path, label in rows if path is not None]
    if not present:
        return None
    if len(present) < len(rows):
        log.warning("%d of the run's %s images are missing and not scored", len(rows) - len(present), split)
    where = data or meta.training.get("data_root")
    return CheckImages(
        [p for p, _ in present], [y for _, y in present], f"the run's {split} split ({len(present)} images in {where})"
    )


def compare(reference: Predictor, candidate: Predictor, images: CheckImages) -> Comparison:
    """Both models' calibrated probabilities on `images`: max |difference|, top-1 agreement, accuracies."""
    if not images.items:
        raise DatasetError("no images to check the export on")
    ref = reference.predict_proba(images.items)
    cand = candidate.predict_proba(images.items)
    agreement = float(np.mean(ref.argmax(1) == cand.argmax(1)))
    accuracies: list[float | None] = [None, None]
    if images.labels is not None:
        labels = np.asarray(images.labels)
        accuracies = [float(np.mean(ref.argmax(1) == labels)), float(np.mean(cand.argmax(1) == labels))]
    return Comparison(len(ref), float(np.abs(ref - cand).max()), agreement, *accuracies)


def sample_batch(images: CheckImages, meta: BundleMeta, size: int) -> torch.Tensor:
    """(size, 3, H, W) normalised float32 images from `images`, repeated if there are fewer."""
    pixels = pixel_transform(meta.preprocessing)
    chosen = [images.items[i % len(images.items)] for i in range(size)]
    decoded = [open_image(item) if isinstance(item, Path) else from_array(item) for item in chosen]
    return normalize_batch(torch.stack([pixels(image) for image in decoded]), meta.preprocessing).contiguous()


def throughputs(
    models: Sequence[torch.nn.Module], batch: torch.Tensor, *, repeats: int = 3, seconds: float = 0.3
) -> list[float]:
    """Images per second through each model on `batch`: the best of `repeats` timed runs of each.

    A run times whole passes for at least `seconds`: a pass of a small model takes a few
    milliseconds, and a handful of them measures the first calls' allocations more than the model
    (an int8 graph warms up slowest: 32 images made it 1.2-1.5x faster than float where 1 s
    runs say 2.2x). The models take turns, so a neighbour's burst of load hits all of them alike.
    """
    best = [0.0] * len(models)
    with torch.inference_mode():
        for model in models:
            for _ in range(3):  # warm-up: first runs allocate
                model(batch)
        for _ in range(repeats):
            for index, model in enumerate(models):
                start, images = time.perf_counter(), 0
                while (elapsed := time.perf_counter() - start) < seconds:
                    model(batch)
                    images += len(batch)
                best[index] = max(best[index], images / elapsed)
    return best
