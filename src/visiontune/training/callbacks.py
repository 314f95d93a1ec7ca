"""Callbacks: the trainer calls these hooks; logging, checkpointing and early stopping live here.

Every hook is a no-op by default. A callback that keeps state returns it from `state_dict()` so a
resumed run resumes the callback too. Callbacks stop training by setting `trainer.should_stop`.
Only the main process writes files: callbacks that write check `trainer.is_main`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from visiontune.config import Monitor
from visiontune.plots import plot_history
from visiontune.runs.folder import HISTORY, LEGACY_COLUMNS, RunFolder
from visiontune.training.events import Callback
from visiontune.training.schedule import LRFinderResult, smooth, suggest_lr

if TYPE_CHECKING:
    from visiontune.training.trainer import Trainer

log = logging.getLogger(__name__)

EPOCH_FIELDS = (
    "epoch",
    "phase",
    "train_loss",
    "valid_loss",
    "valid_accuracy",
    "valid_balanced_accuracy",
    "valid_error_rate",
    "valid_macro_f1",
    "lr",
    "time_s",
    "images_per_s",
    "data_wait_pct",
)


class MetricsLogger(Callback):
    """metrics.csv (one row per epoch) and metrics.jsonl, rewritten atomically after each epoch."""

    def __init__(self, run: RunFolder) -> None:
        self.run = run
        self.rows: list[dict[str, Any]] = []

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.rows.append({k: metrics.get(k) for k in EPOCH_FIELDS})
        if trainer.is_main:
            self.run.write_epochs(self.rows, EPOCH_FIELDS)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rows = state.get("rows", [])  # checkpoints of earlier releases name the columns without their split
        self.rows = [{LEGACY_COLUMNS.get(k, k): v for k, v in row.items()} for row in rows]


class Stopwatch(Callback):
    """The time a run has taken over all its sessions: its state goes into every checkpoint, so a resumed
    run adds the time up to the last checkpoint (an epoch cut short and trained again counts once)."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.perf_counter() if started is None else started  # this session's start
        self.before = 0.0  # earlier sessions

    @property
    def elapsed_s(self) -> float:
        return self.before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.before = float(state.get("elapsed_s", 0.0))  # 0 from checkpoints of earlier releases


class HistoryPlot(Callback):
    """history.png: loss and accuracy curves, redrawn after each epoch."""

    def __init__(self, run: RunFolder, logger: MetricsLogger) -> None:
        self.run, self.logger = run, logger

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.is_main:
            plot_history(self.logger.rows, self.run.file(HISTORY))


class Checkpointer(Callback):
    """checkpoints/last.safetensors after every epoch; best.safetensors when the monitored metric improves.

    It remembers the best and the last epoch's scores: which of the two is bundled is
    `finetune.kept_checkpoint`'s choice.
    """

    def __init__(self, run: RunFolder, monitor: Monitor) -> None:
        self.run = run
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.last: float | None = None
        self.last_epoch: int | None = None

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = float(metrics[self.monitor.name])
        improved = self.monitor.better(value, self.best)
        self.last, self.last_epoch = value, int(metrics["epoch"])
        if improved:
            self.best, self.best_epoch = value, self.last_epoch
        if trainer.is_main:
            if improved:
                trainer.save_checkpoint(self.run.checkpoint("best"), weights_only=True)
            trainer.save_checkpoint(self.run.checkpoint("last"))

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "last": self.last, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        self.last, self.last_epoch = state.get("last"), state.get("last_epoch")  # None in earlier releases' files


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved for `patience` epochs."""

    def __init__(self, monitor: Monitor, patience: int) -> None:
        self.monitor, self.patience = monitor, patience
        self.best: float | None = None
        self.waited = 0
        self.stopped = False  # the schedule was cut short: its last epoch is not the annealed end

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = float(metrics[self.monitor.name])
        if self.monitor.better(value, self.best):
            self.best, self.waited = value, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            log.warning("early stop: %s has not improved for %d epochs", self.monitor.name, self.patience)
            trainer.should_stop = self.stopped = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.waited = state.get("best"), int(state.get("waited", 0))


class LRFinder(Callback):
    """Records the loss at each step of the range test and stops it once the loss blows up.

    The trainer runs a `lr_find` phase (exponential ramp) with this as its only callback; the
    losses are averaged over processes so every rank stops at the same step.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def after_batch(self, trainer: Trainer, loss: float, batch_size: int) -> None:
        value = float(trainer.accelerator.reduce(torch.tensor(loss, device=trainer.device), reduction="mean"))
        self.lrs.append(max(group["lr"] for group in trainer.optimizer.param_groups))  # the rate this batch used
        self.losses.append(value)
        smoothed = smooth(self.losses)
        diverged = not math.isfinite(value) or (len(smoothed) > 11 and smoothed[-1] > 4 * min(smoothed))
        if diverged or trainer.step >= self.steps:
            trainer.should_stop = True

    def result(self) -> LRFinderResult:
        smoothed = smooth(self.losses)
        return LRFinderResult(self.lrs, smoothed, suggest_lr(self.lrs, smoothed))
