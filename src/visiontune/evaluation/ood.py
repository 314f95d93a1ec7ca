"""Out-of-distribution check: does the bundle's "unknown" score tell its classes from everything else?

Given the labelled evaluation images (in-distribution) and a folder of images of none of the
classes, report the AUROC of the bundle's unknown score for separating the two (0.5 = chance,
1 = every OOD image scores below every known one; needs no threshold), plus the shares of each
flagged unknown at the bundle's calibrated threshold, which is what predict would do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score

from visiontune.calibration import ALL_SCORES, FEATURE_SCORES, UNKNOWN_SCORES, Calibration
from visiontune.data.images import is_image_file
from visiontune.data.sources import Sample
from visiontune.data.walk import walk_files
from visiontune.errors import DatasetError

OOD_LABEL = "(ood)"  # a placeholder label: OOD images have no class


def ood_samples(folder: str | Path) -> list[Sample]:
    """Every image file under `folder` (any layout: flat or in sub-folders), in a stable order."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        what = "no such folder" if not root.exists() else "not a folder"
        raise DatasetError(f"{root}: {what}; --ood takes a folder of images of none of the model's classes")
    paths = [p for p in walk_files(root) if is_image_file(p)]
    if not paths:
        raise DatasetError(f"{root}: no image files; --ood takes a folder of images of none of the model's classes")
    return [Sample(path, OOD_LABEL) for path in paths]


def ood_metrics(
    known: torch.Tensor,
    unknown: torch.Tensor,
    calibration: Calibration,
    embeddings: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> dict[str, Any]:
    """AUROC and flagged shares from (N, K) logits of in-distribution images and (M, K) logits of OOD ones.

    The bundle's chosen score gives `auroc`; `auroc_by_score` has every score for comparison.
    `flagged_ood` is the share of OOD images called unknown (higher is better), `flagged_in` the
    share of in-distribution images (lower is better); both None without a stored threshold.

    Example:
        >>> ood_metrics(test_logits, ood_logits, meta.calibration)["auroc"]  # doctest: +SKIP
        0.93
    """
    featured = embeddings[0] is not None and embeddings[1] is not None
    name = calibration.score if featured or calibration.score not in FEATURE_SCORES else "msp"
    threshold = calibration.threshold(name)
    labels = [1] * len(known) + [0] * len(unknown)  # positive = in-distribution: higher score, more familiar
    by_score, flagged = {}, {}
    for score in ALL_SCORES if featured else UNKNOWN_SCORES:
        parts = [calibration.scores(x, score, embeddings=e) for x, e in zip((known, unknown), embeddings, strict=True)]
        by_score[score] = float(roc_auc_score(labels, torch.cat(parts).double().numpy()))
        flagged[score] = [float(calibration.flag(values, score).double().mean()) for values in parts]
    result: dict[str, Any] = {
        "images": len(unknown),
        "in_distribution_images": len(known),
        "score": name,
        "auroc": by_score[name],
        "auroc_by_score": by_score,
        "threshold": threshold,
        "flagged_ood": None,
        "flagged_in": None,
        "fpr_at_95_tpr_by_score": {},
    }
    for score in by_score:  # FPR@95%TPR: the share of OOD images kept when 95% of known ones are
        known_values = calibration.scores(known, score, embeddings=embeddings[0])
        unknown_values = calibration.scores(unknown, score, embeddings=embeddings[1])
        result["fpr_at_95_tpr_by_score"][score] = fpr_at_tpr(known_values, unknown_values)
    if threshold is not None:
        result["flagged_in"], result["flagged_ood"] = flagged[name]
    return result


def fpr_at_tpr(known: torch.Tensor, unknown: torch.Tensor, tpr: float = 0.95) -> float:
    """The share of OOD scores at or above the cut that keeps `tpr` of the in-distribution scores."""
    cut = torch.quantile(known.double(), 1 - tpr)
    return float((unknown.double() >= cut).double().mean())


def ood_score_values(
    logits: torch.Tensor, calibration: Calibration, embeddings: torch.Tensor | None = None
) -> torch.Tensor:
    """(N,) the bundle's unknown score of each image (for the score histogram)."""
    score = calibration.score if embeddings is not None or calibration.score not in FEATURE_SCORES else "msp"
    return calibration.scores(logits, score, embeddings=embeddings)
