"""The features fitter (method="features"): the fast path without backpropagation through the backbone.

data -> frozen backbone -> cached pooled features (each image embedded once, ever) -> every
requested head fitted on the training features and scored on the validation ones -> the best
head by the run's monitor, with the backbone, is the classifier the pipeline bundles. Its run
folder holds what a fine-tuning run's does plus heads.csv (one row per head), and no checkpoints
or per-epoch metrics (there are no epochs). Extraction picks its own batch size (small batches
on a CPU), not the fine-tuning batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from visiontune.config import RunConfig
from visiontune.data.dataset import LabelledImages
from visiontune.data.sources import Sample
from visiontune.features.cache import weights_digest
from visiontune.features.classical import HeadResult, best_head, fit_heads, predict_logits, score_logits
from visiontune.features.extract import Extraction, View, extract_features
from visiontune.models import Classifier
from visiontune.models.fitted import FeatureClassifier
from visiontune.training.fitting import Fitted, Hooks, Prepared

log = logging.getLogger(__name__)


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


def fit_features(p: Prepared, hooks: Hooks) -> Fitted:
    """Embed every split (through the cache), fit `features.heads`, keep the best by the monitor.

    `hooks.on_total(n)` / `hooks.progress(n)` follow extraction (cache hits count too);
    `hooks.on_head(result)` is called as each head is scored.
    """
    cfg = p.config.features
    if hooks.on_total:
        train_images = len(p.data.split("train"))
        hooks.on_total(sum(len(p.data.split(s)) for s in p.data.splits) + (cfg.views - 1) * train_images)
    embedded = embed_splits(p.model, p.data, p.config, progress=hooks.progress)
    results = fit_heads(
        embedded.x["train"],
        embedded.y["train"],
        embedded.x["valid"],
        embedded.y["valid"],
        heads=cfg.heads,
        num_classes=len(p.data.classes),
        seed=p.config.train.seed,
        on_fit=hooks.on_head,
    )
    best = best_head(results, p.monitor)
    # the kept head's logits, computed once: heads.csv's test accuracy and `finish` both read them
    kept = {split: predict_logits(best.head, embedded.x[split]) for split in ("valid", "test") if split in embedded.x}
    rows = _head_rows(results, best, kept, embedded, len(p.data.classes))
    if p.is_main:
        p.run.write_heads(rows)
        features = {**embedded.summary(), "weights_sha256": weights_digest(p.model.backbone)}
        backbone = sum(x.numel() for x in p.model.backbone.parameters())
        p.run.update_info({"heads": list(cfg.heads), "features": features,
                           "parameters": {"backbone": backbone, "trainable": 0}})  # fmt: skip
    model = FeatureClassifier.wrap(p.model, best.head, pool=p.config.model.pool, tta=cfg.tta)

    def logits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return kept[split], torch.as_tensor(embedded.y[split])

    def embeddings(split: str) -> torch.Tensor:  # train: the plain view only, not the augmented copies
        return torch.as_tensor(embedded.x[split][: len(p.data.split(split))])

    return Fitted(
        model,
        logits,
        best_head=best.name,
        results={"best_head": best.name, "heads": rows, "extraction": embedded.summary()},
        bundle_training={"heads": rows},
        embeddings=embeddings,
    )


def _head_rows(
    results: list[HeadResult],
    best: HeadResult,
    kept: dict[str, torch.Tensor],
    embedded: Embedded,
    num_classes: int,
) -> list[dict[str, Any]]:
    """heads.csv: each head's valid_* scores, its test accuracy (recorded, never used to choose), fit time."""
    rows = []
    for result in results:
        row: dict[str, Any] = {"head": result.name, **{f"valid_{k}": v for k, v in result.valid.items()}}
        if "test" in embedded.x:
            logits = kept["test"] if result is best else predict_logits(result.head, embedded.x["test"])
            row["test_accuracy"] = score_logits(logits, embedded.y["test"], num_classes=num_classes)["accuracy"]
        rows.append({**row, "fit_s": round(result.fit_s, 3), "best": result is best})
    return rows


def embed_splits(
    model: Classifier, data: LabelledImages, config: RunConfig, *, progress: Callable[[int], None] | None = None
) -> Embedded:
    """Features of every split (through the cache), plus `views - 1` augmented views of each training image.

    One extraction over all splits (one cache lookup, one loader), then one per augmented view.
    """
    cfg, train = config.features, config.train
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
            num_workers=train.num_workers,
            precision=train.precision,
            max_pixels=config.data.max_pixels,
            progress=progress,
        )

    extractions = [extract([s for samples in splits.values() for s in samples], View())]
    bounds = np.cumsum([0, *(len(samples) for samples in splits.values())])
    x = {name: extractions[0].features[bounds[i] : bounds[i + 1]] for i, name in enumerate(splits)}
    for index in range(1, cfg.views):  # augmented copies: training images only
        extractions.append(extract(splits["train"], View(index, train.augment_config(), train.seed)))
        x["train"] = np.concatenate([x["train"], extractions[-1].features])
    labels["train"] = np.tile(labels["train"], cfg.views)
    return Embedded(x, labels, extractions)
