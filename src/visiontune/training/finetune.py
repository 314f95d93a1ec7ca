"""The fine-tune fitter (methods finetune and scratch): the Trainer's loop, its callbacks, the epoch kept.

fastai's `fine_tune` for a pretrained backbone (frozen epochs, then everything with
discriminative rates), one one-cycle phase for a scratch model; `--lr auto` runs the range test
first. Imbalanced data gets class weights in the loss (largest class over 3x the smallest) or
balanced batches (`balance: sampler`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass

import torch

from visiontune.config import FinetuneConfig, LoaderConfig, Monitor
from visiontune.data.datamodule import DataModule
from visiontune.data.dataset import LabelledImages
from visiontune.detector import BANK_CAP, bank_rows
from visiontune.embedding import default_layout, logits_and_embeddings
from visiontune.evaluation.intervals import within_noise
from visiontune.training.callbacks import (
    Callback,
    Checkpointer,
    EarlyStopping,
    HistoryPlot,
    MetricsLogger,
    Stopwatch,
)
from visiontune.training.checkpoint import load_checkpoint
from visiontune.training.fitting import Fitted, Hooks, Prepared
from visiontune.training.trainer import Trainer

log = logging.getLogger(__name__)


def fit_finetune(p: Prepared, hooks: Hooks) -> Fitted:
    """Train (or resume) to the end, then load the kept epoch's weights (`kept_checkpoint`) for `finish`."""
    trained = train_kept(p, hooks)
    scores = SplitScores(trained.trainer, seed=p.config.train.seed)
    return Fitted(
        trained.trainer.raw_model,
        scores.logits,
        best_epoch=trained.epoch,
        weights=trained.trainer.ema_weights,
        elapsed_before=trained.elapsed_before,
        embeddings=scores.embeddings,
        embedding_layout=scores.layout,
    )


@dataclass
class Trained:
    """A trainer whose model holds the kept epoch's weights; that epoch, its score, and earlier sessions' seconds."""

    trainer: Trainer
    epoch: int | None
    score: float | None
    elapsed_before: float


def train_kept(p: Prepared, hooks: Hooks) -> Trained:
    """The Trainer's loop run (or resumed) to its end, and the kept epoch's weights loaded (not yet scored)."""
    cfg, train = p.config.finetune, p.config.train
    datamodule = DataModule(
        p.data,
        p.model.preprocessing,
        train.augment_config(),
        LoaderConfig(batch_size=cfg.batch_size, num_workers=train.num_workers),
        seed=train.seed,
        max_pixels=p.config.data.max_pixels,
        decode_once=train.decode_once,
    )
    balance = resolve_balance(cfg, p.imbalance)
    stopwatch = Stopwatch(p.started)
    trainer = Trainer(
        p.model,
        datamodule,
        cfg,
        seed=train.seed,
        precision=train.precision,
        callbacks=[stopwatch, *_callbacks(p, list(hooks.callbacks))],
        monitor=p.monitor,
        class_weights=class_weights(p.data) if balance == "weights" else None,
        balanced_sampler=balance == "sampler",
        accelerator=p.accelerator,
    )
    ended = p.run.info().get("kept") if p.resume else None  # its schedule had ended (a BudgetStop's too)
    if p.resume:
        trainer.load_checkpoint(load_checkpoint(p.run.checkpoint("last")))
    elif cfg.lr is None:
        cfg = _find_lr(trainer, p)
    if p.is_main and not p.resume:
        p.run.update_info({"balance": balance, "class_weights": _listed(trainer.class_weights)})
    lr = float(cfg.lr)  # type: ignore[arg-type]  # resolved by now
    if ended is not None:
        log.info("%s: training had ended; its kept epoch is reloaded", p.run.path)
    elif p.config.train.method == "scratch":
        trainer.fit(epochs=cfg.epochs + cfg.freeze_epochs, lr=lr)
    else:
        trainer.fine_tune(epochs=cfg.epochs, freeze_epochs=cfg.freeze_epochs, lr=lr, lr_ratio=cfg.lr_ratio)
    return _load_kept(trainer, p, elapsed_before=stopwatch.before, ended=ended)


def _load_kept(trainer: Trainer, p: Prepared, *, elapsed_before: float, ended: dict[str, str] | None) -> Trained:
    """The kept epoch's weights loaded into the trainer's model: chosen now, or as recorded when training had ended
    in an earlier session (a resumed ensemble's finished members)."""
    trainer.accelerator.wait_for_everyone()
    checkpointer = next(c for c in trainer.callbacks if isinstance(c, Checkpointer))
    stopped = any(isinstance(c, EarlyStopping) and c.stopped for c in trainer.callbacks)
    if ended is not None and ended.get("checkpoint") in ("best", "last"):
        kept, why = ended["checkpoint"], ended.get("why", "")
    else:
        kept, why = kept_checkpoint(checkpointer, p.monitor, len(p.data.split("valid")), early_stopped=stopped)
    log.info("kept epoch %s: %s", checkpointer.last_epoch if kept == "last" else checkpointer.best_epoch, why)
    if p.is_main:
        p.run.update_info({"kept": {"checkpoint": kept, "why": why}})
    ckpt = load_checkpoint(p.run.checkpoint(kept))
    trainer.raw_model.load_state_dict(ckpt.model)
    if trainer.ema is not None and ckpt.ema:
        trainer.ema.load_state_dict(ckpt.ema)
    score = checkpointer.last if kept == "last" else checkpointer.best
    return Trained(trainer, ckpt.state.get("epoch"), score, elapsed_before)


def kept_checkpoint(
    checkpointer: Checkpointer, monitor: Monitor, valid: int, *, early_stopped: bool
) -> tuple[str, str]:
    """Which epoch to bundle, "best" or "last", and why.

    The last epoch, when its validation score is inside the 95% interval of the best's (on `valid`
    images) and the schedule ran to its end: a one-cycle schedule's annealed end is the better
    bet, and an earlier epoch that scores a little higher on a few hundred validation images is
    mostly the luck of that draw. On the demo, in all 8 runs whose best-scoring epoch was not the
    last, the last scored as well or better on the test split, 0.7 points on average
    (bench/RESULTS.md). An earlier epoch that is better beyond noise (overfitting, a diverged end),
    a run stopped early, or a loss monitor (no interval) keep the best-scoring epoch.
    """
    best, last = checkpointer.best, checkpointer.last
    if best is None or last is None or checkpointer.last_epoch == checkpointer.best_epoch:
        return "best", "the best-scoring epoch is the last"
    gap = f"{monitor.name} {last:.4f} against {best:.4f} at epoch {checkpointer.best_epoch}, on {valid} images"
    if early_stopped:
        return "best", "early stopping ended the schedule before its end"
    if monitor.name == "valid_loss":
        return "best", "the lowest validation loss (a loss has no interval to compare within)"
    if within_noise(last, best, valid):
        return "last", f"the schedule's end, within noise of the best ({gap})"
    return "best", f"better beyond noise than the schedule's end ({gap})"


class SplitScores:
    """The kept model's logits and embeddings of a split, read through the Trainer's evaluation loaders.

    `model` (default the trainer's own) is what is scored: an `Ensemble` of members trained
    before, on the same device, reads the same loaders.

    Validation's logits and its embeddings (the unknown detector's threshold) come from one pass,
    kept for the second call; the bank's training embeddings are a pass over at most `BANK_CAP`
    training images (the draw `fit_knn` would make). Both read the decoded-once pixels in the
    training batch size and shard across ranks: every rank calls, each embeds its share.
    """

    def __init__(self, trainer: Trainer, *, seed: int, model: torch.nn.Module | None = None) -> None:
        self.trainer, self.seed = trainer, seed
        self.model = trainer.raw_model if model is None else model
        self.layout = default_layout(self.model)
        self.forward = logits_and_embeddings(self.model, self.layout)
        self.kept: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def logits(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split != "valid":  # the only split whose embeddings are read
            return self.trainer.predict(split, forward=None if self.model is self.trainer.raw_model else self.model)
        return self._both(split)[:2]

    def embeddings(self, split: str) -> torch.Tensor:
        if split != "train":
            return self._both(split)[2]
        rows = bank_rows(len(self.trainer.datamodule.data.split("train")), cap=BANK_CAP, seed=self.seed)
        outputs, _ = self.trainer.predict("train", forward=self.forward, subset=rows)
        return outputs[:, self._classes :]

    @property
    def _classes(self) -> int:
        return len(self.trainer.datamodule.classes)

    def _both(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if split not in self.kept:
            outputs, targets = self.trainer.predict(split, forward=self.forward)
            self.kept[split] = outputs[:, : self._classes], targets, outputs[:, self._classes :]
        return self.kept[split]


def resolve_balance(cfg: FinetuneConfig, imbalance: float) -> str:
    """`auto`: class weights in the loss when the largest class has over 3x the images of the smallest."""
    if cfg.balance != "auto":
        return cfg.balance
    return "weights" if imbalance > 3.0 else "none"


def class_weights(data: LabelledImages) -> torch.Tensor:
    """Inverse-frequency loss weights (mean 1), in class order."""
    counts = Counter(s.label for s in data.split("train"))
    weights = 1.0 / torch.tensor([counts[c] for c in data.classes], dtype=torch.float32)
    return weights * len(weights) / weights.sum()


def _callbacks(p: Prepared, extra: list[Callback]) -> list[Callback]:
    logger = MetricsLogger(p.run)
    callbacks: list[Callback] = [logger, HistoryPlot(p.run, logger), Checkpointer(p.run, p.monitor)]
    if p.config.finetune.patience:
        callbacks.append(EarlyStopping(p.monitor, p.config.finetune.patience))
    return callbacks + extra


def _find_lr(trainer: Trainer, p: Prepared) -> FinetuneConfig:
    """Run the range test, plot it, and record the suggestion in config.yaml as the lr that ran."""
    from visiontune.plots import plot_lr_find  # matplotlib only when the range test runs

    result = trainer.lr_find()
    if trainer.is_main:
        plot_lr_find(result, p.run.file("lr_find.png"))
    log.info("lr_find suggests %.2e", result.suggestion)
    cfg = dataclasses.replace(p.config.finetune, lr=float(f"{result.suggestion:.3g}"))
    p.config = dataclasses.replace(p.config, finetune=cfg)
    if p.is_main:
        p.run.write_config(p.config)
    return cfg


def _listed(weights: torch.Tensor | None) -> list[float] | None:
    return None if weights is None else weights.tolist()
