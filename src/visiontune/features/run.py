"""`train_features(config)`: method="features", the fast path without backpropagation through the backbone.

data -> frozen backbone -> cached pooled features (each image embedded once, ever) -> every
requested head fitted on the training features and scored on the validation ones -> the best
head, with the backbone, becomes the bundle. The run folder holds what a fine-tuning run's does
(config.yaml, run.json, classes.json, splits.csv, results.json, model/) plus heads.csv, one row
per head, and no checkpoints or per-epoch metrics (there are no epochs).

The input size defaults to the backbone's own (224 for EfficientNet-Lite0), not the upsampled
size fine-tuning picks for small images: frozen ImageNet features are best at the scale they were
learnt at. On the 28 px Fashion-MNIST subset the head chosen on validation reached 0.852 test
accuracy on features at 112 px and 0.882 at 224 px (every head 1-3 points better at 224).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visiontune.bundle import BundleMeta, save_bundle
from visiontune.config import RunConfig, save_yaml
from visiontune.data.dataset import LabelledImages, load_data
from visiontune.data.sources import Sample
from visiontune.errors import ConfigError
from visiontune.evaluation.calibration import calibrate, expected_calibration_error
from visiontune.evaluation.metrics import imbalance_ratio
from visiontune.features.cache import weights_digest
from visiontune.features.extract import Extraction, View, extract_features
from visiontune.features.heads import DEFAULT_HEADS, HeadResult, best_head, fit_heads, predict_logits, score_logits
from visiontune.io import atomic_write_json, atomic_write_text
from visiontune.models import Classifier, create_classifier, get_backbone
from visiontune.models.fitted import FeatureClassifier
from visiontune.system import library_versions
from visiontune.training.lock import run_lock
from visiontune.training.run import TrainResult, _auto_monitor, _model_kwargs, _run_dir, hardware
from visiontune.training.trainer import make_accelerator

log = logging.getLogger(__name__)

VERSIONS = ("visiontune", "torch", "torchvision", "timm", "numpy", "pillow", "scikit-learn")


@dataclass
class FeaturesResult(TrainResult):
    """A features run: TrainResult plus the table of heads and what extraction did."""

    best_head: str = ""
    heads: list[dict[str, Any]] = field(default_factory=list)  # heads.csv rows
    extraction: dict[str, Any] = field(default_factory=dict)


@dataclass
class Embedded:
    """Features and class indices of each split (train includes its augmented views)."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    extractions: list[Extraction]

    def summary(self) -> dict[str, Any]:
        extracted = sum(e.extracted for e in self.extractions)
        seconds = sum(e.seconds for e in self.extractions)
        return {
            "extracted": extracted,
            "reused": sum(e.reused for e in self.extractions),
            "seconds": round(seconds, 3),
            "images_per_s": round(extracted / seconds, 1) if extracted and seconds else None,
            "dim": int(self.x["train"].shape[1]),
        }


def train_features(
    config: RunConfig,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    label_func: Callable[[Path], object] | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_head: Callable[[HeadResult], None] | None = None,
) -> FeaturesResult:
    """Embed the data with the frozen backbone, fit `config.train.heads`, keep the best; write run folder and bundle.

    `progress(n)` / `on_total(n)` follow feature extraction (cache hits count too); `on_head` is
    called as each head is scored.

    Example:
        >>> cfg = RunConfig(DataConfig(source="photos"), train=TrainConfig(method="features"))  # doctest: +SKIP
        >>> result = train_features(cfg)  # doctest: +SKIP
        >>> result.best_head, result.metrics["valid_accuracy"]  # doctest: +SKIP
    """
    started = time.perf_counter()
    config = resolve_features_config(config)
    run_dir = _run_folder(config, resume, overwrite)
    with run_lock(run_dir):  # one writer per run folder
        data = load_data(config.data.source, config.data, label_func=label_func)
        if "valid" not in data.splits:
            raise ConfigError("--method features scores its heads on a validation split: give --valid-pct above 0")
        torch.manual_seed(config.train.seed)
        model = create_classifier(config.model.name, len(data.classes), **_model_kwargs(config))
        if on_total:
            on_total(sum(len(data.split(s)) for s in data.splits) + (config.train.views - 1) * len(data.split("train")))
        embedded = embed_splits(model, data, config, progress=progress)
        outcome = choose_head(embedded, data, config, on_head=on_head)
        bundle_dir = _write_outputs(run_dir, config, data, model, embedded, outcome, started)
        return FeaturesResult(
            run_dir,
            bundle_dir,
            outcome.metrics,
            None,
            time.perf_counter() - started,
            outcome.best.name,
            outcome.rows,
            embedded.summary(),
        )


def _run_folder(config: RunConfig, resume: str | Path | None, overwrite: bool) -> Path:
    """The run folder, as fine-tuning makes it; one process only, no resuming (a rerun is as fast)."""
    if resume is not None:
        raise ConfigError("--method features runs don't resume: run the same command again (features are cached)")
    accelerator = make_accelerator(config.train)
    if accelerator.num_processes > 1:
        raise ConfigError("--method features runs in one process; start it without torchrun / accelerate launch")
    return _run_dir(config, accelerator, None, overwrite=overwrite)


def resolve_features_config(config: RunConfig) -> RunConfig:
    """The default heads and the backbone's own input size filled in, so config.yaml says what ran."""
    train, model = config.train, config.model
    if not train.heads:
        train = dataclasses.replace(train, heads=DEFAULT_HEADS)
    if train.views > 1 and not train.augment_config().enabled:
        raise ConfigError("--views N makes augmented copies of each training image; it needs --augment other than none")
    if model.image_size is None:
        model = dataclasses.replace(model, image_size=get_backbone(model.name).default_size)
    return dataclasses.replace(config, train=train, model=model)


def embed_splits(
    model: Classifier, data: LabelledImages, config: RunConfig, *, progress: Callable[[int], None] | None = None
) -> Embedded:
    """Features of every split (through the cache), plus `views - 1` augmented views of each training image.

    One extraction over all splits (one cache lookup, one loader), then one per augmented view.
    Extraction picks its own batch size (`default_batch_size`: small batches on a CPU), not the
    training batch size in `config.train`.
    """
    cfg = config.train
    splits = {name: data.split(name) for name in data.splits}
    labels = {name: np.array([data.class_to_idx[s.label] for s in samples]) for name, samples in splits.items()}

    def extract(samples: list[Sample], view: View) -> Extraction:
        return extract_features(
            [s.path for s in samples],
            model,
            pool=config.model.pool,
            tta=cfg.tta,
            view=view,
            hashes=[data.infos[s.path].sha256 for s in samples],
            num_workers=cfg.num_workers,
            precision=cfg.precision,
            max_pixels=config.data.max_pixels,
            progress=progress,
        )

    extractions = [extract([s for samples in splits.values() for s in samples], View())]
    bounds = np.cumsum([0, *(len(samples) for samples in splits.values())])
    x = {name: extractions[0].features[bounds[i] : bounds[i + 1]] for i, name in enumerate(splits)}
    for index in range(1, cfg.views):  # augmented copies: training images only
        extractions.append(extract(splits["train"], View(index, cfg.augment_config(), cfg.seed)))
        x["train"] = np.concatenate([x["train"], extractions[-1].features])
    labels["train"] = np.tile(labels["train"], cfg.views)
    return Embedded(x, labels, extractions)


@dataclass
class Outcome:
    """The heads fitted, the one kept, and the numbers written about them."""

    best: HeadResult
    rows: list[dict[str, Any]]  # heads.csv: each head's valid_* scores, test_accuracy, fit_s, best
    metrics: dict[str, float]  # the kept head's valid_* and test_* metrics
    monitor: str
    imbalance: float
    calibration: dict[str, Any]  # temperature and unknown thresholds fitted on the kept head's valid logits


def choose_head(
    embedded: Embedded, data: LabelledImages, config: RunConfig, *, on_head: Callable[[HeadResult], None] | None = None
) -> Outcome:
    """Fit every requested head, keep the best by the validation monitor, score them all on test when there is one.

    The monitor is fine-tuning's: accuracy, or balanced accuracy when the largest class is over
    1.5x the smallest (unless `config.train.monitor` names one). Test accuracies are recorded for
    every head, but only validation scores choose.
    """
    num_classes = len(data.classes)
    ratio = imbalance_ratio(list(Counter(s.label for s in data.split("train")).values()))
    monitor = config.train.monitor if config.train.monitor != "auto" else _auto_monitor(ratio)
    results = fit_heads(
        embedded.x["train"],
        embedded.y["train"],
        embedded.x["valid"],
        embedded.y["valid"],
        heads=config.train.heads,
        num_classes=num_classes,
        seed=config.train.seed,
        on_fit=on_head,
    )
    best = best_head(results, monitor)
    # the kept head's logits, computed once: scored, calibrated on valid, ECE on both
    kept = {split: predict_logits(best.head, embedded.x[split]) for split in ("valid", "test") if split in embedded.x}
    rows, test = [], {}
    for result in results:
        row = {"head": result.name, **{f"valid_{k}": v for k, v in result.valid.items()}}
        if "test" in embedded.x:
            logits = kept["test"] if result is best else predict_logits(result.head, embedded.x["test"])
            test[result.name] = score_logits(logits, embedded.y["test"], num_classes=num_classes)
            row["test_accuracy"] = test[result.name]["accuracy"]
        rows.append({**row, "fit_s": round(result.fit_s, 3), "best": result is best})
    metrics = {f"valid_{k}": v for k, v in best.valid.items()}
    metrics.update({f"test_{k}": v for k, v in test.get(best.name, {}).items()})
    calibration = calibrate(kept["valid"], torch.as_tensor(embedded.y["valid"]))
    for split, logits in kept.items():
        scaled = (logits / calibration["temperature"]).softmax(dim=1)
        metrics[f"{split}_ece"] = expected_calibration_error(scaled, torch.as_tensor(embedded.y[split]))
    return Outcome(best, rows, metrics, monitor, ratio, calibration)


def _write_outputs(
    run_dir: Path,
    config: RunConfig,
    data: LabelledImages,
    model: Classifier,
    embedded: Embedded,
    outcome: Outcome,
    started: float,
) -> Path:
    """The bundle (backbone + kept head) and the run files; returns the bundle folder."""
    manifest = data.manifest_hash()
    bundle = FeatureClassifier.wrap(model, outcome.best.head, pool=config.model.pool, tta=config.train.tta)
    meta = BundleMeta(
        arch=bundle.arch,
        classes=list(data.classes),
        preprocessing=bundle.preprocessing,
        metrics={**outcome.metrics, "head": outcome.best.name, "monitor": outcome.monitor},
        training={"method": "features", "config": config.to_dict(), "heads": outcome.rows,
                  "data_root": str(data.root), "data_manifest_sha256": manifest},
        calibration=outcome.calibration,
        versions=library_versions(VERSIONS),
    )  # fmt: skip
    save_bundle(run_dir / "model", bundle, meta)
    save_yaml(config.to_dict(), run_dir / "config.yaml")
    atomic_write_json(run_dir / "classes.json", data.classes)
    atomic_write_text(run_dir / "splits.csv", _csv([["path", "label", "split"], *_split_rows(data)]))
    columns = list(dict.fromkeys(k for row in outcome.rows for k in row))
    atomic_write_text(run_dir / "heads.csv", _csv([columns, *([r.get(c, "") for c in columns] for r in outcome.rows)]))
    atomic_write_json(run_dir / "run.json", _run_info(config, data, model, embedded, outcome, manifest))
    atomic_write_json(
        run_dir / "results.json",
        {"metrics": outcome.metrics, "best_head": outcome.best.name, "best_epoch": None, "heads": outcome.rows,
         "calibration": outcome.calibration,
         "extraction": embedded.summary(), "elapsed_s": time.perf_counter() - started},
    )  # fmt: skip
    return run_dir / "model"


def _run_info(
    config: RunConfig, data: LabelledImages, model: Classifier, embedded: Embedded, outcome: Outcome, manifest: str
) -> dict[str, Any]:
    return {
        "started": datetime.now().isoformat(timespec="seconds"),
        "method": "features",
        "data_root": str(data.root),
        "data_manifest_sha256": manifest,
        "counts": data.counts(),
        "imbalance_ratio": outcome.imbalance,
        "monitor": outcome.monitor,
        "heads": list(config.train.heads),
        "features": {**embedded.summary(), "weights_sha256": weights_digest(model.backbone)},
        "parameters": {"backbone": sum(p.numel() for p in model.backbone.parameters()), "trainable": 0},
        "versions": library_versions(VERSIONS),
        "hardware": hardware(),
    }


def _split_rows(data: LabelledImages) -> list[list[str]]:
    return [[str(s.path), s.label, s.split] for s in data.samples]


def _csv(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()
