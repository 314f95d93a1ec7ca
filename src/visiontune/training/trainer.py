"""The training loop: Accelerate for devices, precision and processes; phases for fine-tuning.

`fine_tune` is fastai's recipe: a few epochs with the backbone frozen (only the new head learns,
BatchNorm statistics kept), then everything unfrozen with discriminative learning rates (early
layers learn ~100x slower) on a one-cycle schedule. `fit` is one phase, for scratch models, and
`lr_find` is a phase too: the same loop with an exponential ramp and the `LRFinder` callback.
Validation goes through `inference.Inference`, the path evaluate and predict use.
Everything that changes between steps is a function of (seed, epoch, step), so a run resumed from
its last checkpoint ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from torchvision.transforms import v2

from visiontune.config import FinetuneConfig, Monitor, get_monitor
from visiontune.data.datamodule import DataModule
from visiontune.data.loader import Batch, log_failures
from visiontune.data.samplers import item_seed
from visiontune.data.transforms import normalize_batch
from visiontune.evaluation.metrics import classification_metrics
from visiontune.inference import Inference, Scored, resolve_precision
from visiontune.training.callbacks import LRFinder
from visiontune.training.checkpoint import Checkpoint, capture_rng, restore_rng, save_checkpoint
from visiontune.training.ema import ModelEMA
from visiontune.training.events import Callback
from visiontune.training.schedule import LRFinderResult, OneCycle, Ramp, apply_lr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """One one-cycle run over `epochs`: which layers learn and at which peak rate."""

    name: str  # "frozen", "unfrozen", "fit" or "lr_find"
    epochs: int
    lr: float  # peak rate of the head; earlier layer groups get down to lr / lr_ratio
    lr_ratio: float = 1.0
    pct_start: float = 0.25
    div: float = 25.0
    unfreeze_top: int | None = None  # for "unfrozen": None = all layers
    frozen: bool = False  # only the head learns, the backbone's BatchNorm statistics stay
    ramp: Ramp | None = None  # instead of one-cycle (the range test)
    validate: bool = True  # score the validation split after each epoch


def make_accelerator(precision: str = "auto", *, compile: bool = False) -> Accelerator:
    """Accelerate for this machine: the resolved precision, DDP when launched by torchrun or accelerate."""
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve_precision(precision)]
    return Accelerator(
        mixed_precision=mixed, dynamo_backend="inductor" if compile else "no", cpu=not torch.cuda.is_available()
    )


class Trainer:
    """Trains a Classifier on a DataModule; see `fine_tune` and `fit`.

    Example:
        >>> trainer = Trainer(model, datamodule, FinetuneConfig())
        >>> trainer.fine_tune(epochs=3, freeze_epochs=1, lr=2e-3)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        datamodule: DataModule,
        config: FinetuneConfig,
        *,
        seed: int = 42,
        precision: str = "auto",
        callbacks: Sequence[Callback] = (),
        monitor: Monitor | None = None,
        class_weights: torch.Tensor | None = None,
        balanced_sampler: bool = False,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.config, self.datamodule, self.seed = config, datamodule, seed
        self.accelerator = accelerator or make_accelerator(precision, compile=config.compile)
        self.precision = resolve_precision(precision)
        self.device = self.accelerator.device
        self.channels_last = bool(config.channels_last)  # on every device, see FinetuneConfig
        self.raw_model = model.to(self.device)
        if self.channels_last:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)
        self.model: torch.nn.Module = self.raw_model
        self.callbacks = list(callbacks)
        self.monitor = monitor or get_monitor("valid_accuracy")
        self.class_weights = class_weights.to(self.device) if class_weights is not None else None
        self.ema = ModelEMA(self.raw_model, decay=config.ema) if config.ema else None
        self.mixer = _mixer(config, len(datamodule.classes))
        self.train_loader = datamodule.train_dataloader(
            rank=self.accelerator.process_index, world_size=self.accelerator.num_processes, balanced=balanced_sampler
        )
        self.optimizer: Any = None
        self.epoch = 0  # epochs completed, counted across phases
        self.step = 0  # optimizer steps in the current phase
        self.schedule: OneCycle | Ramp | None = None  # the phase under way's, and its epochs [start, end)
        self.phase_start = self.phase_end = self.steps_per_epoch = 0
        self.step_limit: int | None = None  # set when a time budget resized the phase: it ends mid-epoch there
        self.should_stop = False
        self._pending: Checkpoint | None = None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ----------------------------------------------------------------------------------- recipes
    def fine_tune(self, *, epochs: int, freeze_epochs: int = 1, lr: float = 2e-3, lr_ratio: float = 10.0) -> None:
        """Frozen backbone for `freeze_epochs` at `lr`, then all (or the top `unfreeze_top`) layers for `epochs`.

        After a frozen phase the layers peak at lr / 2 (fastai's fine_tune: the head has learnt);
        without one, at `lr`.
        """
        peak = lr / 2 if freeze_epochs else lr
        phases = [
            Phase("frozen", freeze_epochs, lr, 1.0, pct_start=0.99, frozen=True),
            Phase("unfrozen", epochs, peak, lr_ratio, pct_start=0.3, div=5.0, unfreeze_top=self.config.unfreeze_top),
        ]
        self.run_phases([p for p in phases if p.epochs > 0])

    def fit(self, *, epochs: int, lr: float) -> None:
        """One one-cycle phase with every layer learning (scratch models)."""
        self.run_phases([Phase("fit", epochs, lr, 1.0, pct_start=0.25)])

    def run_phases(self, phases: Sequence[Phase]) -> None:
        self._call("before_fit")
        start = 0
        for phase in phases:
            end = start + phase.epochs
            if self.epoch < end and not self.should_stop:
                self._run_phase(phase, start, end)
            start = end
        self._call("after_fit")

    # ----------------------------------------------------------------------------------- phases
    def _run_phase(self, phase: Phase, start: int, end: int) -> None:
        steps_per_epoch = max(1, math.ceil(len(self.train_loader) / self.config.accumulate))
        self.schedule = phase.ramp or OneCycle(phase.epochs * steps_per_epoch, phase.pct_start, phase.div)
        self.phase_start, self.phase_end, self.steps_per_epoch = start, end, steps_per_epoch
        self.step_limit = None
        resumed_inside = self.epoch > start
        self._prepare(phase, restore=self._pending if resumed_inside else None)
        self.step = (self.epoch - start) * steps_per_epoch
        self._call("before_phase", phase.name)
        while self.epoch < self.phase_end and not self.should_stop:
            self._call("before_epoch")
            started = time.perf_counter()
            train = self._train_epoch(self.schedule)
            metrics = self.evaluate("valid") if phase.validate else {}
            elapsed = time.perf_counter() - started
            self.epoch += 1
            row = {"epoch": self.epoch, "phase": phase.name, **train, **metrics, "time_s": elapsed}
            self._call("after_epoch", row)

    def _prepare(self, phase: Phase, *, restore: Checkpoint | None) -> None:
        """(Re)wrap the model for this phase's trainable layers and build its optimizer."""
        raw = self.raw_model
        if phase.frozen:
            raw.freeze_backbone()
        else:
            raw.unfreeze(top=phase.unfreeze_top)
        # fine-tuning keeps the pretrained BatchNorm statistics unless told to adapt them; `fit` (from
        # scratch) must learn them
        raw.freeze_bn_stats(phase.name != "fit" and self.config.bn_stats == "frozen")
        groups = raw.param_groups(phase.lr, weight_decay=self.config.weight_decay, lr_ratio=phase.lr_ratio)
        for group in groups:
            group["max_lr"] = group["lr"]
        optimizer = _optimizer(self.config, groups)
        if restore is not None and restore.optimizer is not None:
            optimizer.load_state_dict(restore.optimizer)
        # DDP registers only the parameters that are trainable when it wraps: re-wrap for each phase
        self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)  # drops the autocast wrapper too
        self.accelerator.free_memory()
        self.model = self.accelerator.prepare_model(raw)
        self.optimizer = self.accelerator.prepare_optimizer(optimizer)
        if restore is not None and self.accelerator.scaler is not None and "scaler" in restore.state:
            self.accelerator.scaler.load_state_dict(restore.state["scaler"])

    def resize_phase(self, steps: int) -> None:
        """Give the phase under way `steps` optimizer steps in all, its one-cycle spread over them.

        A time budget calls this once real epochs are timed: longer when they run faster than
        planned, shorter when slower, so the rate anneals just as the time runs out instead of the
        run ending early or being cut at a high rate. The last epoch may end part-way.
        """
        steps = max(steps, self.step + 1)
        self.phase_end = self.phase_start + math.ceil(steps / self.steps_per_epoch)
        self.step_limit = steps
        if isinstance(self.schedule, OneCycle):
            self.schedule = dataclasses.replace(self.schedule, total=steps)

    # ----------------------------------------------------------------------------------- epochs
    def _seed_epoch(self) -> None:
        """Dropout, MixUp and sampling draw from (seed, epoch, rank) only: resumable and repeatable."""
        torch.manual_seed(item_seed(self.seed, self.epoch, -2 - self.accelerator.process_index))
        self.train_loader.sampler.set_epoch(self.epoch)

    def _train_epoch(self, schedule: OneCycle) -> dict[str, float]:
        self._seed_epoch()
        self.model.train()
        total_loss, seen, waited, lr = 0.0, 0, 0.0, 0.0
        started = time.perf_counter()
        batches, every = len(self.train_loader), self.config.accumulate
        for index, (batch, wait) in enumerate(_timed(self.train_loader)):
            if self.should_stop or (self.step_limit is not None and self.step >= self.step_limit):
                break  # a callback stopped training mid-epoch (the range test), or a resized phase ends here
            waited += wait
            # Accumulate over `every` batches; the epoch's last group may be shorter and is scaled to match.
            group_end = min((index // every + 1) * every, batches)
            group_size = group_end - (index // every) * every
            log_failures(self.train_loader.dataset, batch)
            if batch.pixels is None:  # every file of the batch failed to decode
                if index + 1 == group_end:
                    self._optimizer_step()
                continue
            loss, size, lr = self._train_step(batch, schedule, group_size, last=index + 1 == group_end)
            total_loss, seen = total_loss + loss * size, seen + size
            self._call("after_batch", loss, size)
        elapsed = max(time.perf_counter() - started, 1e-9)
        images = seen * self.accelerator.num_processes
        return {
            "train_loss": total_loss / max(seen, 1),
            "lr": lr,
            "images_per_s": images / elapsed,
            "data_wait_pct": 100.0 * waited / elapsed,
        }

    def _train_step(self, batch: Batch, schedule: OneCycle, group_size: int, *, last: bool) -> tuple[float, int, float]:
        """Forward and backward one batch; step the optimizer when it ends an accumulation group.

        Gradients of a group of `group_size` batches add up to the mean over the group, so
        `accumulate=k` with batch b matches batch k*b; DDP syncs only on the group's last batch.
        """
        images, targets = self._to_device(batch.pixels), batch.targets.to(self.device, non_blocking=True)
        if self.mixer is not None:
            images, targets = self.mixer(images, targets)  # soft targets (B, classes)
        lr = apply_lr(self.optimizer, schedule.factor(self.step))
        sync = last or self.accelerator.num_processes == 1
        with nullcontext() if sync else self.accelerator.no_sync(self.model):
            logits = self.model(images)  # (B, classes), fp32: the head runs outside autocast
            loss = F.cross_entropy(
                logits.float(), targets, weight=self.class_weights, label_smoothing=self.config.label_smoothing
            )
            self.accelerator.backward(loss / group_size)
        if last:
            self._optimizer_step()
        return float(loss.detach()), len(images), lr

    def _optimizer_step(self) -> None:
        if self.config.clip_grad:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.raw_model)

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) float on the device: unaugmented batches arrive as uint8 pixels."""
        images = normalize_batch(images.to(self.device, non_blocking=True), self.datamodule.preprocessing)
        return images.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    # ------------------------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def predict(
        self,
        split: str,
        *,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        subset: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, C) fp32, targets (N,)) of a split's images that decoded, gathered from all ranks.

        `forward` replaces the model's own (`embedding.logits_and_embeddings`: (N, C + D) outputs);
        `subset` reads only the split's samples at those positions. Every rank must call it.
        """
        loader = self.datamodule.eval_dataloader(
            split, rank=self.accelerator.process_index, world_size=self.accelerator.num_processes, subset=subset
        )
        # the unwrapped module: DDP's forward would sync buffers across ranks, and ranks may hold
        # different numbers of evaluation batches
        runner = Inference(self.raw_model, self.datamodule.preprocessing, self.device, self.precision,
                           channels_last=self.channels_last)  # fmt: skip
        with self.ema_weights():
            self.raw_model.eval()
            parts = [(out, batch.indices) for batch, out in runner.batches(loader, forward=forward) if out is not None]
        if self.accelerator.num_processes > 1:
            parts = gather_object(parts)
        scored = Scored.gather([p[0] for p in parts], [p[1] for p in parts], [])
        if len(scored.indices) == 0:
            return torch.empty(0, len(self.datamodule.classes)), torch.empty(0, dtype=torch.long)
        return scored.outputs, torch.as_tensor(loader.dataset.targets)[scored.indices]

    def evaluate(self, split: str) -> dict[str, float]:
        """The split's metrics, named with the split (`valid_loss`, `valid_accuracy`, ...)."""
        logits, targets = self.predict(split)
        metrics = classification_metrics(logits, targets, num_classes=len(self.datamodule.classes))
        return {f"{split}_{name}": value for name, value in metrics.items()}

    def ema_weights(self) -> Any:
        return self.ema.applied(self.raw_model) if self.ema is not None else nullcontext()

    # ------------------------------------------------------------------------------ lr finder
    def lr_find(self, *, start: float = 1e-7, end: float = 10.0, steps: int = 100) -> LRFinderResult:
        """The learning-rate range test: the training loop on the frozen model, lr rising from `start` to `end`.

        One phase with an exponential ramp instead of one-cycle, no validation, and the `LRFinder`
        callback in place of the run's own (which must not log or checkpoint it). Weights, BatchNorm
        statistics, RNG and the epoch count are restored afterwards, so it leaves no trace.
        """
        saved = {k: v.detach().clone() for k, v in self.raw_model.state_dict().items()}
        rng, epoch, callbacks = capture_rng(), self.epoch, self.callbacks
        finder = LRFinder(steps)
        epochs = math.ceil(steps * self.config.accumulate / max(1, len(self.train_loader)))
        ramp = Phase("lr_find", epochs, end, frozen=True, ramp=Ramp(start / end, steps), validate=False)
        self.callbacks = [finder]
        try:
            self.run_phases([ramp])
        finally:
            self.callbacks, self.epoch, self.should_stop = callbacks, epoch, False
            self.raw_model.load_state_dict(saved)
            restore_rng(rng)
        return finder.result()

    # ------------------------------------------------------------------------------ checkpoints
    def checkpoint(self, *, weights_only: bool = False) -> Checkpoint:
        state: dict[str, Any] = {
            "epoch": self.epoch,
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
        }
        if self.accelerator.scaler is not None:
            state["scaler"] = self.accelerator.scaler.state_dict()
        ckpt = Checkpoint(model=self.raw_model.state_dict(), state=state)
        ckpt.ema = self.ema.state_dict() if self.ema is not None else None
        if not weights_only:
            ckpt.optimizer = self.optimizer.state_dict() if self.optimizer is not None else None
            ckpt.rng = capture_rng()
        return ckpt

    def save_checkpoint(self, path: Path, *, weights_only: bool = False) -> None:
        save_checkpoint(path, self.checkpoint(weights_only=weights_only))

    def load_checkpoint(self, ckpt: Checkpoint) -> None:
        """Continue from `ckpt`: weights, EMA, callbacks and epoch now; optimizer when its phase starts."""
        self.raw_model.load_state_dict(ckpt.model)
        if self.ema is not None and ckpt.ema:
            self.ema.load_state_dict(ckpt.ema)
        states = ckpt.state.get("callbacks", {})
        for cb in self.callbacks:
            cb.load_state_dict(states.get(type(cb).__name__, {}))
        self.epoch = int(ckpt.state["epoch"])
        restore_rng(ckpt.rng)
        self._pending = ckpt

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)


def _optimizer(config: FinetuneConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum, nesterov=True)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, momentum=config.momentum, eps=1e-3)
    return torch.optim.AdamW(groups, betas=(0.9, 0.99), eps=1e-6)


def _mixer(config: FinetuneConfig, num_classes: int) -> Any:
    """MixUp and/or CutMix on training batches (torchvision v2); None when both are off."""
    choices = []
    if config.mixup > 0:
        choices.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
    if config.cutmix > 0:
        choices.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


def _timed(loader: Any) -> Iterator[tuple[Any, float]]:
    """Each batch with the seconds spent waiting for it: the data-loading bottleneck made visible."""
    iterator = iter(loader)
    while True:
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch, time.perf_counter() - started
