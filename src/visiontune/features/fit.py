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
import time
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


CHUNK = 256  # training images embedded between two looks at the clock under a time budget


@dataclass
class Embedded:
    """Features and class indices of each split (train includes its augmented views).

    `train_images` is how many training images the first `train_images` rows of `x["train"]`
    embed (their plain view): all of them, or under a time budget the ones embedded in time.
    """

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    extractions: list[Extraction]
    train_images: int = 0
    train_total: int = 0

    def summary(self) -> dict[str, Any]:
        extracted = sum(e.extracted for e in self.extractions)
        seconds = sum(e.seconds for e in self.extractions)
        summary = {
            "extracted": extracted,
            "reused": sum(e.reused for e in self.extractions),
            "seconds": round(seconds, 3),
            "images_per_s": round(extracted / seconds, 1) if extracted and seconds else None,
            "dim": int(self.x["train"].shape[1]),
        }
        if self.train_images < self.train_total:  # a time budget ended extraction early
            summary["train_images"] = {"embedded": self.train_images, "of": self.train_total}
        return summary


def fit_features(p: Prepared, hooks: Hooks) -> Fitted:
    """Embed every split (through the cache), fit `features.heads`, keep the best by the monitor.

    `hooks.on_total(n)` / `hooks.progress(n)` follow extraction (cache hits count too);
    `hooks.on_head(result)` is called as each head is scored.
    """
    cfg = p.config.features
    if hooks.on_total:
        train_images = len(p.data.split("train"))
        hooks.on_total(sum(len(p.data.split(s)) for s in p.data.splits) + (cfg.views - 1) * train_images)
    # under a time budget, training images are embedded while time is left for the heads and the finish
    deadline = p.timing.deadline - p.timing.reserve_s if p.timing and p.timing.deadline is not None else None
    embedded = embed_splits(p.model, p.data, p.config, progress=hooks.progress, deadline=deadline)
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
        return torch.as_tensor(embedded.x[split][: embedded.train_images if split == "train" else None])

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
    model: Classifier,
    data: LabelledImages,
    config: RunConfig,
    *,
    progress: Callable[[int], None] | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Embedded:
    """Features of every split (through the cache), plus `views - 1` augmented views of each training image.

    One extraction over all splits (one cache lookup, one loader), then one per augmented view.
    With a `deadline` (a `clock` time) the other splits are embedded first, in full (calibration
    and the scores need every image), then the training images in chunks, in an order that keeps
    every prefix's classes balanced, until the next chunk would end past the deadline (the first
    always runs); an augmented view is added only when it fits too. What was embedded is cached,
    so a later run with more time starts from there.
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

    if deadline is not None:
        return _embed_by_deadline(splits, labels, deadline, clock, config, extract=extract)
    extractions = [extract([s for samples in splits.values() for s in samples], View())]
    bounds = np.cumsum([0, *(len(samples) for samples in splits.values())])
    x = {name: extractions[0].features[bounds[i] : bounds[i + 1]] for i, name in enumerate(splits)}
    for index in range(1, cfg.views):  # augmented copies: training images only
        extractions.append(extract(splits["train"], View(index, train.augment_config(), train.seed)))
        x["train"] = np.concatenate([x["train"], extractions[-1].features])
    labels["train"] = np.tile(labels["train"], cfg.views)
    count = len(splits["train"])
    return Embedded(x, labels, extractions, train_images=count, train_total=count)


def _embed_by_deadline(
    splits: dict[str, list[Sample]],
    labels: dict[str, np.ndarray],
    deadline: float,
    clock: Callable[[], float],
    config: RunConfig,
    *,
    extract: Callable[[list[Sample], View], Extraction],
) -> Embedded:
    """`embed_splits` under a deadline: see there."""
    others = [name for name in splits if name != "train"]
    started = clock()
    extractions = [extract([s for name in others for s in splits[name]], View())]
    bounds = np.cumsum([0, *(len(splits[name]) for name in others)])
    x = {name: extractions[0].features[bounds[i] : bounds[i + 1]] for i, name in enumerate(others)}
    per_image = (clock() - started) / max(1, int(bounds[-1]))  # re-timed on each chunk (cache hits are quicker)
    order, parts, done = balanced_order(labels["train"], config.train.seed), [], 0
    while done < len(order):
        chunk = order[done : done + CHUNK]
        if parts and clock() + per_image * len(chunk) > deadline:
            break
        started = clock()
        extractions.append(extract([splits["train"][i] for i in chunk], View()))
        parts.append(extractions[-1].features)
        per_image = (clock() - started) / len(chunk)
        done += len(chunk)
    kept = order[:done]
    total = len(order)
    if done < total:
        log.warning("time budget: %d of %d training images embedded in time; the heads learn from those",
                    done, total)  # fmt: skip
    x["train"] = np.concatenate(parts)
    copies = 1
    for index in range(1, config.features.views):  # augmented copies of the kept images, each only if it fits
        if clock() + per_image * len(kept) > deadline:
            log.warning("time budget: %d of %d augmented views embedded in time", copies - 1, config.features.views - 1)
            break
        view = View(index, config.train.augment_config(), config.train.seed)
        extractions.append(extract([splits["train"][i] for i in kept], view))
        x["train"] = np.concatenate([x["train"], extractions[-1].features])
        copies += 1
    y = {**{name: labels[name] for name in others}, "train": np.tile(labels["train"][kept], copies)}
    return Embedded(x, y, extractions, train_images=done, train_total=total)


def balanced_order(labels: np.ndarray, seed: int) -> list[int]:
    """Indices of `labels` shuffled within each class, then dealt class by class: every prefix is balanced."""
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    order = []
    for depth in range(max((len(q) for q in queues), default=0)):
        order += [q[depth] for q in queues if depth < len(q)]
    return order
