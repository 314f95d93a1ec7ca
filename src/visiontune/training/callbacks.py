"""Callbacks: the trainer calls these hooks; logging, checkpointing and early stopping live here.

Every hook is a no-op by default. A callback that keeps state returns it from `state_dict()` so a
resumed run resumes the callback too. Callbacks stop training by setting `trainer.should_stop`.
Only the main process writes files: callbacks that write check `trainer.is_main`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visiontune.io import atomic_write_text

if TYPE_CHECKING:
    from visiontune.training.trainer import Trainer

log = logging.getLogger(__name__)

EPOCH_FIELDS = (
    "epoch",
    "phase",
    "train_loss",
    "valid_loss",
    "accuracy",
    "balanced_accuracy",
    "error_rate",
    "lr",
    "time_s",
    "images_per_s",
    "data_wait_pct",
)


class Callback:
    """Base class; override the hooks you need."""

    def before_fit(self, trainer: Trainer) -> None:
        """Once, before the first epoch (also after a resume)."""

    def before_phase(self, trainer: Trainer, phase: str) -> None:
        """When a phase (frozen, unfrozen, fit) starts or resumes."""

    def before_epoch(self, trainer: Trainer) -> None:
        """At the start of each epoch."""

    def after_batch(self, trainer: Trainer, loss: float, batch_size: int) -> None:
        """After each optimizer step's batch, with its training loss."""

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """After validation, with the epoch's row of metrics."""

    def after_fit(self, trainer: Trainer) -> None:
        """Once, after the last epoch or an early stop."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""


def monitor_better(monitor: str, value: float, best: float | None) -> bool:
    """Loss goes down, accuracies go up."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if monitor.endswith("loss") else value > best


class MetricsLogger(Callback):
    """metrics.csv (one row per epoch) and metrics.jsonl, rewritten atomically after each epoch."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.rows: list[dict[str, Any]] = []

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.rows.append({k: metrics.get(k) for k in EPOCH_FIELDS})
        if not trainer.is_main:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EPOCH_FIELDS)
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in row.items()} for row in self.rows)
        atomic_write_text(self.out_dir / "metrics.csv", buffer.getvalue())
        atomic_write_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state.get("rows", []))


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


class HistoryPlot(Callback):
    """history.png: loss and accuracy curves, redrawn after each epoch."""

    def __init__(self, out_dir: Path, logger: MetricsLogger) -> None:
        self.out_dir, self.logger = out_dir, logger

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.is_main:
            from visiontune.evaluation.plots import plot_history

            plot_history(self.logger.rows, self.out_dir / "history.png")


class Checkpointer(Callback):
    """checkpoints/last.safetensors after every epoch; best.safetensors when the monitored metric improves."""

    def __init__(self, out_dir: Path, monitor: str) -> None:
        self.dir = out_dir / "checkpoints"
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch: int | None = None

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = float(metrics[self.monitor])
        improved = monitor_better(self.monitor, value, self.best)
        if improved:
            self.best, self.best_epoch = value, int(metrics["epoch"])
        if trainer.is_main:
            if improved:
                trainer.save_checkpoint(self.dir / "best.safetensors", weights_only=True)
            trainer.save_checkpoint(self.dir / "last.safetensors")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved for `patience` epochs."""

    def __init__(self, monitor: str, patience: int) -> None:
        self.monitor, self.patience = monitor, patience
        self.best: float | None = None
        self.waited = 0

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = float(metrics[self.monitor])
        if monitor_better(self.monitor, value, self.best):
            self.best, self.waited = value, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            log.warning("early stop: %s has not improved for %d epochs", self.monitor, self.patience)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.waited = state.get("best"), int(state.get("waited", 0))


class TensorBoardLogger(Callback):
    """Epoch metrics as TensorBoard scalars, when the `tensorboard` package is installed."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.writer: Any = None

    @staticmethod
    def available() -> bool:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return False
        return True

    def before_fit(self, trainer: Trainer) -> None:
        if trainer.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and key != "epoch":
                    self.writer.add_scalar(key, value, int(metrics["epoch"]))
            self.writer.flush()

    def after_fit(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
