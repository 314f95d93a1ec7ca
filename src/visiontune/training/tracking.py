"""Trackers: a run's progress and results sent to the tools people already watch (TensorBoard, MLflow).

The run folder stays the record; `--log tensorboard,mlflow` (`train.log`) adds trackers. A
`Tracker` is a `Callback` (per-epoch metrics, from the fine-tune fitter's trainer) that also sees
the run start (`start`: the resolved config and run.json), each ensemble member's start (`member`:
its epochs count from 1 again, so they go to the member's own TensorBoard folder or MLflow child
run) and the end (`finish`: the final metrics, the confusion matrix and sample predictions, the run
folder's figures and the bundle), so every method is tracked: a features run has no epochs, and
logs each head's scores instead. Only the
main process tracks (under torchrun the other ranks hold no trackers). The libraries are
imported when a tracker is asked for; a missing one is a one-line error naming the extra.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from visiontune.config import RunConfig
from visiontune.data.images import open_image
from visiontune.errors import MissingPackageError
from visiontune.evaluation.figures import plot_confusion_matrix, plot_image_grid
from visiontune.evaluation.metrics import confusion_counts
from visiontune.training.events import Callback
from visiontune.training.fitting import Fitted, Prepared

if TYPE_CHECKING:
    from visiontune.training.pipeline import TrainResult

EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # --log name -> the package it needs
SAMPLE_IMAGES = 12  # validation images in the sample-predictions figure
THUMBNAIL = 96


def require(name: str) -> ModuleType:
    """The tracker's library, or a one-line MissingPackageError saying what to install."""
    package = EXTRAS[name]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingPackageError(
            f"--log {name} needs the {package} package: pip install 'visiontune[{name}]' (or leave {name} out of --log)"
        ) from None


@dataclass
class RunEnd:
    """What a tracker logs once the run has finished: `finish`'s metrics and the figures drawn from them."""

    result: TrainResult
    step: int  # the last epoch (0 for a features run): where final values are logged
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG (confusion_matrix, valid_predictions)

    @property
    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.result.metrics.items() if isinstance(v, int | float)}

    def head_metrics(self) -> dict[str, float]:
        """A features run's heads as metrics: heads/<head>/valid_accuracy, ..., fit_s."""
        scores = {}
        for row in self.result.heads:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    scores[f"heads/{row['head']}/{key}"] = float(value)
        return scores


class Tracker(Callback):
    """A Callback that also sees the run start and end (on the main process only)."""

    def start(self, p: Prepared) -> None:
        """After the run files are written (also on a resume), before fitting."""

    def member(self, member: Prepared, number: int, of: int) -> None:
        """Before an ensemble's member `number` (1-based, of `of`) trains; member 1 is the run itself."""

    def finish(self, p: Prepared, end: RunEnd) -> None:
        """After the bundle and results.json are written."""

    def fail(self, p: Prepared | None, error: BaseException) -> None:
        """The run stopped with `error` (Ctrl-C included): close what `start` opened."""


def flat_params(config: RunConfig) -> dict[str, str]:
    """The resolved config as `section.key` -> text (MLflow params, TensorBoard hparams); the tracking URI left out."""
    params: dict[str, str] = {}
    for section, values in config.to_dict().items():
        if not isinstance(values, dict):
            params[section] = str(values)
            continue
        for key, value in values.items():
            if key != "mlflow_uri":  # it may carry a password, and says nothing about the model
                params[f"{section}.{key}"] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return params


def draw_figures(p: Prepared, fitted: Fitted, folder: Path) -> dict[str, Path]:
    """The validation confusion matrix and a grid of validation images with their predictions, as PNGs."""
    logits, targets = fitted.logits("valid")
    predicted = logits.argmax(dim=1)
    classes = list(p.data.classes)
    matrix = confusion_counts(targets, predicted, len(classes)).numpy()
    figures = {name: folder / f"{name}.png" for name in ("confusion_matrix", "valid_predictions")}
    plot_confusion_matrix(matrix, classes, figures["confusion_matrix"])
    samples = p.data.split("valid")[:SAMPLE_IMAGES]
    images = torch.stack([_thumbnail(s.path) for s in samples])
    guesses = [classes[i] for i in predicted[: len(samples)].tolist()]
    titles = [f"{guess}\n(true: {s.label})" for guess, s in zip(guesses, samples, strict=True)]
    wrong = [guess != s.label for guess, s in zip(guesses, samples, strict=True)]
    plot_image_grid(images, titles, figures["valid_predictions"], wrong=wrong)
    return figures


def _thumbnail(path: Path) -> torch.Tensor:
    image = open_image(path).resize((THUMBNAIL, THUMBNAIL))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def read_png(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a figure, for TensorBoard."""
    return np.asarray(open_image(path), dtype=np.uint8)
