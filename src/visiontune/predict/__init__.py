"""Prediction with a trained bundle: `load(path).predict(images)`, top-k with an honest "unknown".

Example:
    >>> from visiontune.predict import load
    >>> predictions = load("runs/demo").predict(["shoe.png"])  # doctest: +SKIP
    >>> predictions[0].label, predictions[0].unknown  # doctest: +SKIP
"""

from __future__ import annotations

from visiontune.predict.predictor import Prediction, Predictor, load, tta_views

__all__ = ["Prediction", "Predictor", "load", "tta_views"]
