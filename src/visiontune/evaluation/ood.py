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

from visiontune.calibration import UNKNOWN_SCORES, Calibration
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


def ood_metrics(known: torch.Tensor, unknown: torch.Tensor, calibration: Calibration) -> dict[str, Any]:
    """AUROC and flagged shares from (N, K) logits of in-distribution images and (M, K) logits of OOD ones.

    The bundle's chosen score gives `auroc`; `auroc_by_score` has every score for comparison.
    `flagged_ood` is the share of OOD images called unknown (higher is better), `flagged_in` the
    share of in-distribution images (lower is better); both None without a stored threshold.

    Example:
        >>> ood_metrics(test_logits, ood_logits, meta.calibration)["auroc"]  # doctest: +SKIP
        0.93
    """
    name, threshold = calibration.score, calibration.threshold()
    labels = [1] * len(known) + [0] * len(unknown)  # positive = in-distribution: higher score, more familiar
    by_score = {}
    for score in UNKNOWN_SCORES:
        values = torch.cat([calibration.scores(x, score) for x in (known, unknown)])
        by_score[score] = float(roc_auc_score(labels, values.double().numpy()))
    result: dict[str, Any] = {
        "images": len(unknown),
        "in_distribution_images": len(known),
        "score": name,
        "auroc": by_score[name],
        "auroc_by_score": by_score,
        "threshold": threshold,
        "flagged_ood": None,
        "flagged_in": None,
    }
    if threshold is not None:
        result["flagged_ood"] = _share_flagged(unknown, calibration)
        result["flagged_in"] = _share_flagged(known, calibration)
    return result


def _share_flagged(logits: torch.Tensor, calibration: Calibration) -> float:
    return float(calibration.is_unknown(logits).double().mean())
