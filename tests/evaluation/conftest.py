"""One evaluation of the shared fine-tuned run (with an OOD folder), reused by the evaluate and report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiontune.evaluation.evaluate import EvalConfig, EvalResult, evaluate


def write_ood_images(folder: Path, seed: int = 0) -> list[Path]:
    """Eight images of none of the Fashion-MNIST classes: noise, gradients, stripes, colour blocks (one nested)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 28, dtype=np.uint8)
    arrays = [
        rng.integers(0, 256, (28, 28), dtype=np.uint8),
        rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
        np.tile(ramp, (28, 1)),
        np.tile(ramp[:, None], (1, 28)),
        np.kron((np.indices((4, 4)).sum(axis=0) % 2 * 255).astype(np.uint8), np.ones((7, 7), dtype=np.uint8)),
        np.stack([np.full((28, 28), 200, np.uint8), np.tile(ramp, (28, 1)), np.zeros((28, 28), np.uint8)], axis=2),
        np.full((28, 28), 255, np.uint8),
        (np.arange(28 * 28).reshape(28, 28) % 7 * 36).astype(np.uint8),
    ]
    paths = []
    for k, array in enumerate(arrays):
        path = folder / ("nested" if k == 7 else "") / f"ood_{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image: ignored")
    return paths


@pytest.fixture(scope="session")
def ood_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ood") / "ood"
    write_ood_images(folder)
    return folder


@pytest.fixture(scope="session")
def evaluated(
    finetuned_run: Path, trained_data: Path, ood_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> EvalResult:
    """`evaluate(finetuned_run, trained_data, --ood, --top-losses 6)` into a temporary folder (read-only)."""
    out = tmp_path_factory.mktemp("evaluated") / "eval"
    return evaluate(finetuned_run, trained_data, EvalConfig(out=str(out), ood=str(ood_folder), top_losses=6))
