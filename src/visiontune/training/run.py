"""`train(config)`: data -> model -> trainer -> run folder -> bundle, the whole path in one call.

A run folder holds everything needed to understand, resume or reproduce the run:
config.yaml (resolved), run.json (data manifest hash, versions, hardware), classes.json,
splits.csv, metrics.csv/.jsonl, history.png, checkpoints/{last,best}.safetensors and model/
(the bundle). Under several processes only the main one writes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import platform
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from visiontune.bundle import BundleMeta, save_bundle
from visiontune.config import LoaderConfig, RunConfig, TrainConfig, load_yaml, save_yaml
from visiontune.data.audit import suggest_image_size
from visiontune.data.datamodule import DataModule
from visiontune.data.dataset import LabelledImages, load_data
from visiontune.errors import VisiontuneError
from visiontune.evaluation.calibration import calibrate
from visiontune.evaluation.metrics import imbalance_ratio, split_metrics
from visiontune.io import atomic_write_json, atomic_write_text
from visiontune.models import create_classifier, get_backbone
from visiontune.system import available_cpus, library_versions
from visiontune.training.callbacks import (
    Callback,
    Checkpointer,
    EarlyStopping,
    HistoryPlot,
    MetricsLogger,
    TensorBoardLogger,
)
from visiontune.training.checkpoint import CheckpointError, load_checkpoint
from visiontune.training.lock import LOCK_FILE, check_unlocked, run_lock
from visiontune.training.trainer import Trainer, make_accelerator, resolve_precision

log = logging.getLogger(__name__)


class RunExistsError(VisiontuneError):
    """The output folder already holds a run (or other files)."""


@dataclass
class TrainResult:
    """Where the run is and how it did."""

    run_dir: Path
    bundle_dir: Path
    metrics: dict[str, Any]
    best_epoch: int | None
    elapsed_s: float


def train(
    config: RunConfig,
    *,
    callbacks: Sequence[Callback] = (),
    resume: str | Path | None = None,
    label_func: Callable[[Path], object] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train a classifier as `config` says and write its run folder and bundle.

    A folder that already holds a run is refused unless `overwrite` (which replaces it) or `resume`.

    Example:
        >>> result = train(RunConfig(DataConfig(source="photos")))
        >>> result.metrics["valid_accuracy"], result.bundle_dir
    """
    if config.train.method == "features":  # no training loop: embed once, fit classical heads
        from visiontune.features.run import train_features

        return train_features(config, resume=resume, overwrite=overwrite, label_func=label_func)
    started = time.perf_counter()
    accelerator = make_accelerator(config.train)
    run_dir = _run_dir(config, accelerator, resume, overwrite=overwrite)
    with run_lock(run_dir, enabled=accelerator.is_main_process):
        with accelerator.main_process_first():  # the main process fills the file-info cache for the others
            data = load_data(config.data.source, config.data, label_func=label_func)
        config = _resolved(config, data)
        set_seed(config.train.seed)  # the head's (or a scratch model's) initial weights
        model = create_classifier(config.model.name, len(data.classes), **_model_kwargs(config))
        datamodule = DataModule(
            data,
            model.preprocessing,
            config.train.augment_config(),
            LoaderConfig(batch_size=config.train.batch_size, num_workers=config.train.num_workers),
            seed=config.train.seed,
            max_pixels=config.data.max_pixels,
        )
        ratio = imbalance_ratio(list(Counter(s.label for s in data.split("train")).values()))
        monitor = config.train.monitor if config.train.monitor != "auto" else _auto_monitor(ratio)
        trainer = Trainer(
            model,
            datamodule,
            config.train,
            out_dir=run_dir,
            callbacks=_callbacks(run_dir, config.train, monitor, callbacks),
            monitor=monitor,
            class_weights=_class_weights(data, config.train, ratio),
            balanced_sampler=_balance(config.train, ratio) == "sampler",
            accelerator=accelerator,
        )
        if resume is not None:
            trainer.load_checkpoint(load_checkpoint(run_dir / "checkpoints" / "last.safetensors"))
        elif config.train.lr is None:
            config = _find_lr(trainer, config, run_dir)
        if accelerator.is_main_process and resume is None:
            _write_run_files(run_dir, config, data, trainer, monitor, ratio)
        _fit(trainer, config.train)
        return _finish(trainer, config, data, run_dir, started)


def _fit(trainer: Trainer, cfg: TrainConfig) -> None:
    lr = float(cfg.lr)  # resolved by now
    if cfg.method == "scratch":
        trainer.fit(epochs=cfg.epochs + cfg.freeze_epochs, lr=lr)
    else:
        trainer.fine_tune(epochs=cfg.epochs, freeze_epochs=cfg.freeze_epochs, lr=lr, lr_ratio=cfg.lr_ratio)


def resume_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run folder was started with."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no config.yaml; --resume needs a folder made by `visiontune train`")
    if not (Path(run_dir) / "checkpoints" / "last.safetensors").is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint yet (it stopped before its first epoch ended); start it again")
    return RunConfig.from_dict(load_yaml(path))


# ---------------------------------------------------------------------------------------- set-up
def _run_dir(config: RunConfig, accelerator: Accelerator, resume: str | Path | None, *, overwrite: bool) -> Path:
    """runs/<date>-<data>-<model> unless --out says otherwise; the same path on every rank."""
    if resume is not None:
        return Path(resume)
    if config.out:
        path = Path(config.out)
    else:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(config.data.source).stem or "data")
        name = config.name or f"{datetime.now():%Y%m%d-%H%M%S}-{stem}-{config.model.name}"
        path = Path("runs") / name
    holder = [str(path)]
    if accelerator.num_processes > 1:
        broadcast_object_list(holder)
    path = Path(holder[0])
    if accelerator.is_main_process:
        check_unlocked(path)
    if (path / "config.yaml").is_file():
        if not overwrite:
            raise RunExistsError(
                f"{path} already holds a run: continue it with --resume {path}, replace it with --overwrite,"
                " or choose another --out"
            )
        if accelerator.is_main_process:
            shutil.rmtree(path)
    elif path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir()) and not overwrite:
        raise RunExistsError(f"{path} is a folder of other files; choose another --out (or --overwrite to use it)")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _resolved(config: RunConfig, data: LabelledImages) -> RunConfig:
    """Fill in what was left to the data, so config.yaml says what really ran.

    The image size defaults to what the audit suggests for these images, at most the backbone's own
    size: 28 px Fashion-MNIST trains at 112 px, photos at 224.
    The `strong` recipe adds MixUp/CutMix and an EMA of the weights unless they were set. A randomly
    initialised backbone has no BatchNorm statistics worth freezing, so they adapt.
    """
    if config.model.image_size is None:
        sides = [min(i.width, i.height) for s in data.split("train") if (i := data.infos[s.path]).width and i.height]
        size = min(suggest_image_size(sides)[0], get_backbone(config.model.name).default_size)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, image_size=size))
    train = config.train
    if not config.model.pretrained and config.model.weights is None and train.bn_stats == "frozen":
        train = dataclasses.replace(train, bn_stats="adapt")  # random init: no statistics worth keeping
    if train.augment == "strong":
        if train.mixup == 0 and train.cutmix == 0:
            train = dataclasses.replace(train, mixup=0.2, cutmix=1.0)
        if train.ema is None:
            train = dataclasses.replace(train, ema=0.999)
    return dataclasses.replace(config, train=train)


def _model_kwargs(config: RunConfig) -> dict[str, Any]:
    m = config.model
    pretrained = m.pretrained and config.train.method != "scratch"
    return {
        "pretrained": pretrained,
        "weights": m.weights,
        "drop_rate": m.drop_rate,
        "pool": m.pool,
        "image_size": m.image_size,
        "resize_mode": m.resize_mode,
    }


def _auto_monitor(ratio: float) -> str:
    return "balanced_accuracy" if ratio > 1.5 else "accuracy"


def _balance(cfg: TrainConfig, ratio: float) -> str:
    if cfg.balance != "auto":
        return cfg.balance
    return "weights" if ratio > 3.0 else "none"


def _class_weights(data: LabelledImages, cfg: TrainConfig, ratio: float) -> torch.Tensor | None:
    """Inverse-frequency loss weights (mean 1) when balancing by weights."""
    if _balance(cfg, ratio) != "weights":
        return None
    counts = Counter(s.label for s in data.split("train"))
    freq = torch.tensor([counts[c] for c in data.classes], dtype=torch.float32)
    weights = 1.0 / freq
    return weights * len(weights) / weights.sum()


def _callbacks(run_dir: Path, cfg: TrainConfig, monitor: str, extra: Sequence[Callback]) -> list[Callback]:
    logger = MetricsLogger(run_dir)
    callbacks: list[Callback] = [logger, HistoryPlot(run_dir, logger), Checkpointer(run_dir, monitor)]
    if cfg.patience:
        callbacks.append(EarlyStopping(monitor, cfg.patience))
    if TensorBoardLogger.available():
        callbacks.append(TensorBoardLogger(run_dir))
    return callbacks + list(extra)


def _find_lr(trainer: Trainer, config: RunConfig, run_dir: Path) -> RunConfig:
    result = trainer.lr_find()
    if trainer.is_main:
        result.plot(str(run_dir / "lr_find.png"))
    log.info("lr_find suggests %.2e", result.suggestion)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, lr=float(f"{result.suggestion:.3g}")))


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "processor": platform.processor() or None}
    info["cpus"] = available_cpus()
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _write_run_files(
    run_dir: Path, config: RunConfig, data: LabelledImages, trainer: Trainer, monitor: str, ratio: float
) -> None:
    save_yaml(config.to_dict(), run_dir / "config.yaml")
    atomic_write_json(run_dir / "classes.json", data.classes)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "split"])
    writer.writerows((str(s.path), s.label, s.split) for s in data.samples)
    atomic_write_text(run_dir / "splits.csv", buffer.getvalue())
    atomic_write_json(
        run_dir / "run.json",
        {
            "started": datetime.now().isoformat(timespec="seconds"),
            "data_root": str(data.root),
            "data_manifest_sha256": data.manifest_hash(),
            "counts": data.counts(),
            "imbalance_ratio": ratio,
            "monitor": monitor,
            "balance": _balance(config.train, ratio),
            "class_weights": None if trainer.class_weights is None else trainer.class_weights.tolist(),
            "precision": resolve_precision(config.train.precision),
            "processes": trainer.accelerator.num_processes,
            "parameters": trainer.raw_model.parameter_summary(),
            "versions": library_versions(("visiontune", "torch", "torchvision", "timm", "accelerate", "numpy")),
            "hardware": hardware(),
        },
    )


# --------------------------------------------------------------------------------------- finish
def _finish(trainer: Trainer, config: RunConfig, data: LabelledImages, run_dir: Path, started: float) -> TrainResult:
    """Load the best weights, score valid (and test), write the bundle and results.json."""
    best = run_dir / "checkpoints" / "best.safetensors"
    trainer.accelerator.wait_for_everyone()
    ckpt = load_checkpoint(best)
    trainer.raw_model.load_state_dict(ckpt.model)
    if trainer.ema is not None and ckpt.ema:
        trainer.ema.load_state_dict(ckpt.ema)
    logits, targets, _ = trainer.predict("valid")
    calibration = calibrate(logits, targets)
    metrics = split_metrics("valid", logits, targets, len(data.classes), calibration["temperature"])
    if "test" in data.splits:
        logits, targets, _ = trainer.predict("test")
        metrics.update(split_metrics("test", logits, targets, len(data.classes), calibration["temperature"]))
    best_epoch = ckpt.state.get("epoch")
    bundle_dir = run_dir / "model"
    if trainer.is_main:
        meta = _meta(trainer, config, data, metrics, best_epoch)
        meta.calibration = calibration
        with trainer.ema_weights():
            save_bundle(bundle_dir, trainer.raw_model, meta)
        elapsed = time.perf_counter() - started
        atomic_write_json(
            run_dir / "results.json",
            {"metrics": metrics, "best_epoch": best_epoch, "calibration": calibration, "elapsed_s": elapsed},
        )
    trainer.accelerator.wait_for_everyone()
    return TrainResult(run_dir, bundle_dir, metrics, best_epoch, time.perf_counter() - started)


def _meta(
    trainer: Trainer, config: RunConfig, data: LabelledImages, metrics: dict[str, Any], best_epoch: int | None
) -> BundleMeta:
    model = trainer.raw_model
    return BundleMeta(
        arch=model.arch,
        classes=list(data.classes),
        preprocessing=model.preprocessing,
        metrics={**metrics, "best_epoch": best_epoch, "monitor": trainer.monitor},
        training={
            "method": config.train.method,
            "config": config.to_dict(),
            "data_root": str(data.root),
            "data_manifest_sha256": data.manifest_hash(),
            "run_dir": str(trainer.out_dir),
        },
        versions=library_versions(("visiontune", "torch", "torchvision", "timm", "numpy", "pillow")),
    )


def read_results(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "results.json").read_text())
