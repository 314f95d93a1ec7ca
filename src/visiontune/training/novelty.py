"""The k-NN unknown detector, fitted at the end of training for both methods (see detector.py).

It needs the embeddings of training images (the bank) and of validation images (its
threshold), in the layout `embedding.default_layout` picks for the model. The features method
has them already (cached pooled vectors, `Fitted.embeddings`); for a fine-tuned model they are
computed here ("stages": every feature stage's pooled output and the final one) with the kept
weights through `Inference`, the forward pass every other reader uses, for a seeded subsample
of at most `BANK_CAP` training images.
"""

from __future__ import annotations

import logging

import torch

from visiontune.calibration import Calibration
from visiontune.data.loader import ImageItems
from visiontune.data.transforms import pixel_transform
from visiontune.detector import BANK_CAP, DEFAULT_K, fit_knn
from visiontune.embedding import POOLED, default_layout, embeddings
from visiontune.inference import Inference
from visiontune.training.fitting import Fitted, Prepared

log = logging.getLogger(__name__)


def add_detector(p: Prepared, fitted: Fitted, calibration: Calibration) -> Calibration:
    """`calibration` with the k-NN detector and its validation threshold; unchanged when there is nothing to fit."""
    if len(p.data.split("train")) < DEFAULT_K or not p.data.split("valid"):
        return calibration
    layout = POOLED if fitted.embeddings else default_layout(fitted.model)
    embed = fitted.embeddings or (lambda split: _embed(p, fitted, split, layout))
    train, valid = embed("train"), embed("valid")
    detector = fit_knn(train, k=DEFAULT_K, cap=BANK_CAP, seed=p.config.train.seed, embedding=layout)
    log.info("k-NN detector: %d training embeddings (k=%d, %s, %d dimensions)",
             len(detector.bank), detector.k, layout, detector.dim)  # fmt: skip
    return calibration.with_detector(detector, valid)


def _embed(p: Prepared, fitted: Fitted, split: str, layout: str) -> torch.Tensor:
    """(N, D) embeddings of a split (training: a seeded subsample of at most BANK_CAP) with the kept weights."""
    samples = p.data.split(split)
    if split == "train" and len(samples) > BANK_CAP:
        keep = torch.randperm(len(samples), generator=torch.Generator().manual_seed(p.config.train.seed))[:BANK_CAP]
        samples = [samples[i] for i in sorted(keep.tolist())]
    model = fitted.model
    runner = Inference.create(model, model.preprocessing, device=p.accelerator.device,
                              precision=p.config.train.precision)  # fmt: skip
    dataset = ImageItems([s.path for s in samples], pixel_transform(model.preprocessing),
                         max_pixels=p.config.data.max_pixels)  # fmt: skip
    loader = runner.loader(dataset, num_workers=p.config.train.num_workers)
    with fitted.weights():
        return runner.outputs(loader, forward=lambda images: embeddings(model, images, layout)).outputs
