"""The fine-tune fitter (methods finetune and scratch): the Trainer's loop, its callbacks, the best epoch.

fastai's `fine_tune` for a pretrained backbone (frozen epochs, then everything with
discriminative rates), one one-cycle phase for a scratch model; `--lr auto` runs the range test
first. Imbalanced data gets class weights in the loss (largest class over 3x the smallest) or
balanced batches (`balance: sampler`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import torch

from visiontune.config import FinetuneConfig, LoaderConfig
from visiontune.data.datamodule import DataModule
from visiontune.data.dataset import LabelledImages
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
    """Train (or resume) to the end, then load the best epoch's weights for `finish` to score and bundle."""
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
    if p.resume:
        trainer.load_checkpoint(load_checkpoint(p.run.checkpoint("last")))
    elif cfg.lr is None:
        cfg = _find_lr(trainer, p)
    if p.is_main and not p.resume:
        p.run.update_info({"balance": balance, "class_weights": _listed(trainer.class_weights)})
    lr = float(cfg.lr)  # type: ignore[arg-type]  # resolved by now
    if p.config.train.method == "scratch":
        trainer.fit(epochs=cfg.epochs + cfg.freeze_epochs, lr=lr)
    else:
        trainer.fine_tune(epochs=cfg.epochs, freeze_epochs=cfg.freeze_epochs, lr=lr, lr_ratio=cfg.lr_ratio)
    return _best(trainer, p, elapsed_before=stopwatch.before)


def _best(trainer: Trainer, p: Prepared, *, elapsed_before: float) -> Fitted:
    trainer.accelerator.wait_for_everyone()
    ckpt = load_checkpoint(p.run.checkpoint("best"))
    trainer.raw_model.load_state_dict(ckpt.model)
    if trainer.ema is not None and ckpt.ema:
        trainer.ema.load_state_dict(ckpt.ema)
    return Fitted(
        trainer.raw_model,
        trainer.predict,
        best_epoch=ckpt.state.get("epoch"),
        weights=trainer.ema_weights,
        elapsed_before=elapsed_before,
    )


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
