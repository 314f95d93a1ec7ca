"""The k-NN unknown detector, fitted at the end of training for both methods (see detector.py).

It needs the embeddings of training images (the bank) and of validation images (its
threshold), in the layout the fitter names (`Fitted.embedding_layout`). The features method
has them already (cached pooled vectors); a fine-tuned model's ("stages": every feature stage's
pooled output and the final one) come from the fitter's evaluation passes with the kept weights
(`finetune.SplitScores`): validation's from the pass that scored it, the bank's from a pass over
a seeded subsample of at most `BANK_CAP` training images.
"""

from __future__ import annotations

import logging

from visiontune.calibration import Calibration
from visiontune.detector import BANK_CAP, DEFAULT_K, fit_knn
from visiontune.training.fitting import Fitted, Prepared

log = logging.getLogger(__name__)


def add_detector(p: Prepared, fitted: Fitted, calibration: Calibration) -> Calibration:
    """`calibration` with the k-NN detector and its validation threshold; unchanged when there is nothing to fit.

    Every rank calls it (each embeds its share of the images); the main process fits.
    """
    if fitted.embeddings is None or len(p.data.split("train")) < DEFAULT_K or not p.data.split("valid"):
        return calibration
    train, valid = fitted.embeddings("train"), fitted.embeddings("valid")
    if not p.is_main:
        return calibration
    layout = fitted.embedding_layout
    detector = fit_knn(train, k=DEFAULT_K, cap=BANK_CAP, seed=p.config.train.seed, embedding=layout)
    log.info("k-NN detector: %d training embeddings (k=%d, %s, %d dimensions)",
             len(detector.bank), detector.k, layout, detector.dim)  # fmt: skip
    return calibration.with_detector(detector, valid)
