"""Prediction with a trained bundle: `load(path).predict(images)`, top-k with an honest "unknown".

Example:
    >>> from visiontune.predict import load
    >>> predictions = load("runs/demo").predict(["shoe.png"])  # doctest: +SKIP
    >>> predictions[0].label, predictions[0].unknown  # doctest: +SKIP

The names below come from `predict.predictor` when first used, so the CLI can expand and check
its inputs (`predict.inputs`) and refuse bad arguments without importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Prediction", "Predictor", "load", "tta_views"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'visiontune.predict' has no attribute {name!r}")
    from visiontune.predict import predictor

    return getattr(predictor, name)
