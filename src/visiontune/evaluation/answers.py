"""eval/answers.csv: every evaluated image's actual and predicted class, for paired comparisons of runs.

Two runs evaluated on the same images can be compared image by image (McNemar's test in
`runs compare`), which is far sharper than comparing two accuracies: only the images where the
runs disagree carry evidence. Paths are absolute, as in misclassified.csv, so two runs evaluated on
the same data folder line up.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from visiontune.evaluation.intervals import mcnemar
from visiontune.io import atomic_write_text

FILE = "answers.csv"


def write_answers(
    folder: Path, paths: list[str], targets: torch.Tensor, predicted: torch.Tensor, classes: list[str]
) -> None:
    """path, actual, predicted, correct: one row per evaluated image."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "actual", "predicted", "correct"])
    for path, actual, guess in zip(paths, targets.tolist(), predicted.tolist(), strict=True):
        writer.writerow([path, classes[actual], classes[guess], int(actual == guess)])
    atomic_write_text(folder / FILE, buffer.getvalue())


def read_answers(folder: Path) -> dict[str, bool] | None:
    """{path: correct} from a run's eval folder; None when it was never evaluated (or before answers.csv)."""
    path = folder / FILE
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        return {row["path"]: row["correct"] == "1" for row in csv.DictReader(handle)}


def paired_test(a: dict[str, bool] | None, b: dict[str, bool] | None) -> dict[str, Any] | None:
    """McNemar's test of two runs' answers when they were evaluated on exactly the same images; else None."""
    if not a or not b or set(a) != set(b):
        return None
    paths = sorted(a)
    return mcnemar(torch.tensor([a[p] for p in paths]), torch.tensor([b[p] for p in paths]))
