"""Which tune trials are within noise of the best: a search's "winner" is often a coin flip.

Trials are scored on the same validation images; a validation accuracy of 0.900 on 600 images has
a 95% interval of about 0.874 to 0.922, so a trial at 0.885 is not shown to be worse. A trial is
marked when its score lies inside the best trial's 95% Wilson interval (evaluation/intervals.py).
Only for proportions (accuracy, balanced accuracy, macro F1 as an approximation); a loss has no
such interval here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visiontune.evaluation.intervals import within_noise
from visiontune.runs.folder import RunFolder

PROPORTIONS = ("valid_accuracy", "valid_balanced_accuracy", "valid_macro_f1")


def valid_images(run_dir: str | Path | None) -> int | None:
    """How many validation images a trial's run scored (from its run.json); None when unknown."""
    if not run_dir:
        return None
    counts = (RunFolder(run_dir).info().get("counts") or {}).get("valid") or {}
    return sum(counts.values()) or None


def within_noise_of_best(rows: list[dict[str, Any]], best: dict[str, Any] | None, monitor: str) -> set[int]:
    """Numbers of the finished trials (not the best) whose score is inside the best's 95% interval."""
    if best is None or monitor not in PROPORTIONS:
        return set()
    n = valid_images(best.get("run_dir") or (best.get("user_attrs") or {}).get("run_dir"))
    if n is None:
        return set()
    return {
        row["number"]
        for row in rows
        if row["number"] != best["number"] and row["state"] == "complete" and row["value"] is not None
        and within_noise(float(row["value"]), float(best["value"]), n)
    }  # fmt: skip
