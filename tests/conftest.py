"""Shared fixtures: tiny real-image folders cut from the bundled Fashion-MNIST subset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiontune.data.demo import FASHION_MNIST_CLASSES, load_subset


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the user's ~/.cache."""
    monkeypatch.setenv("VISIONTUNE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def fashion() -> dict[str, np.ndarray]:
    return load_subset()


def write_class_folders(
    root: Path,
    arrays: dict[str, np.ndarray],
    *,
    classes: tuple[int, ...] = (0, 1, 7),
    per_class: int = 10,
    split: str = "train",
) -> Path:
    """Write `per_class` real Fashion-MNIST PNGs of each class into root/<class name>/."""
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    for c in classes:
        folder = root / FASHION_MNIST_CLASSES[c]
        folder.mkdir(parents=True, exist_ok=True)
        for k, index in enumerate(np.flatnonzero(labels == c)[:per_class]):
            Image.fromarray(images[index]).save(folder / f"{FASHION_MNIST_CLASSES[c]}_{k:03d}.png")
    return root


@pytest.fixture
def class_folder(tmp_path: Path, fashion: dict[str, np.ndarray]) -> Path:
    """tmp/data/{t-shirt_top,trouser,sneaker}/*.png, 10 real images each."""
    return write_class_folders(tmp_path / "data", fashion)


@pytest.fixture
def split_folder(tmp_path: Path, fashion: dict[str, np.ndarray]) -> Path:
    """tmp/data/{train,val,test}/<class>/*.png with distinct real images in each split."""
    root = tmp_path / "data"
    write_class_folders(root / "train", fashion, per_class=8)
    write_class_folders(root / "test", fashion, per_class=4, split="test")
    # valid: other training images than the train folder's (offset by taking from the end)
    images, labels = fashion["train_images"], fashion["train_labels"]
    for c in (0, 1, 7):
        folder = root / "val" / FASHION_MNIST_CLASSES[c]
        folder.mkdir(parents=True)
        for k, index in enumerate(np.flatnonzero(labels == c)[-3:]):
            Image.fromarray(images[index]).save(folder / f"v{k}.png")
    return root


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}
