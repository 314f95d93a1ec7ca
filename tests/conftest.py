"""Shared fixtures: tiny real-image folders cut from the bundled Fashion-MNIST subset."""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from visiontune.data.demo import FASHION_MNIST_CLASSES, load_subset


def pytest_configure(config: pytest.Config) -> None:
    """No collector walks while collection imports the libraries (a dozen full ones, ~5 s on 2 cores): see below."""
    gc.disable()


def pytest_collection_finish(session: pytest.Session) -> None:
    freeze_heap()


def pytest_unconfigure(config: pytest.Config) -> None:
    gc.enable()


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap() -> None:
    freeze_heap()


def freeze_heap() -> None:
    """Take what is alive (torch, timm, sklearn, session fixtures...) out of the cyclic collector's walks, from now on.

    accelerate's `free_memory()` runs a full `gc.collect()` at every training phase, and `tune` one after every
    trial: each walked every live object (700,000 once collection has imported the libraries; more once a test
    has imported onnx's exporter or mlflow), 0.3-0.7 s on 2 cores, hundreds of times a suite. Called once
    collection is done and as each test module starts: what a module makes is collected as before, and the
    collect here frees the previous module's fixtures first.
    """
    import hypothesis  # noqa: F401  # its plugins (trio's PRNG) register first: frozen referrers are invisible to them

    gc.collect()
    gc.freeze()
    gc.enable()


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


def write_labels_csv(folder: Path, *extra_rows: str) -> Path:
    """folder/labels.csv listing every PNG under `folder` (path,label from its folder), sorted, then `extra_rows`.

    With `class_folder` the trouser images are lines 22-31 (trouser_002.png is line 24); extra rows start at 32.
    """
    rows = [f"{p.relative_to(folder).as_posix()},{p.parent.name}" for p in sorted(folder.rglob("*.png"))]
    (folder / "labels.csv").write_text("\n".join(["path,label", *rows, *extra_rows]) + "\n")
    return folder / "labels.csv"


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


@pytest.fixture(scope="session")
def trained_data(tmp_path_factory: pytest.TempPathFactory, fashion: dict[str, np.ndarray]) -> Path:
    """data/{train,test}/<class>/*.png: 3 classes, 40 train + 10 test real images each (shared, read-only)."""
    root = tmp_path_factory.mktemp("trained") / "data"
    write_class_folders(root / "train", fashion, per_class=40)
    write_class_folders(root / "test", fashion, per_class=10, split="test")
    return root


@pytest.fixture(scope="session")
def finetuned_run(trained_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned efficientnet_lite0 run folder on `trained_data` (64 px, 1 + 1 epochs; ~20 s on 2 cores).

    Shared by the predict, evaluate, export and serve tests: treat it as read-only. Monitored by
    validation loss, so the kept epoch is the lower-loss frozen one (0.22 against 0.43 after the
    unfrozen epoch; both 29/30 right): a model with the margins of a trained one. The int8 twin of
    the unfrozen epoch agrees with float on only 80-87% of these 30 images, against 99% for the
    demo's 4-epoch model (bench/RESULTS.md).
    """
    from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
    from visiontune.training.pipeline import train

    out = tmp_path_factory.mktemp("finetuned") / "run"
    config = RunConfig(
        DataConfig(source=str(trained_data), valid_pct=0.25),
        ModelConfig(image_size=64),
        TrainConfig(num_workers=0, monitor="valid_loss"),
        FinetuneConfig(epochs=1, freeze_epochs=1, batch_size=16, lr=2e-3),
        out=str(out),
    )
    return train(config).run_dir


@pytest.fixture(scope="session")
def features_run(trained_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A features-method run folder (logistic regression on frozen efficientnet_lite0 features at 64 px)."""
    from visiontune.config import DataConfig, FeaturesConfig, ModelConfig, RunConfig, TrainConfig
    from visiontune.training.pipeline import train

    out = tmp_path_factory.mktemp("features") / "run"
    config = RunConfig(
        DataConfig(source=str(trained_data), valid_pct=0.25),
        ModelConfig(image_size=64),
        TrainConfig(method="features", num_workers=0),
        features=FeaturesConfig(heads=("logreg",)),
        out=str(out),
    )
    return train(config).run_dir


@pytest.fixture(scope="session")
def finetuned_onnx(finetuned_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`export_model(finetuned_run, quantize="int8")` into a temporary folder: model.onnx and model.int8.onnx beside it.

    The ExportReport, read-only. One export serves the float and the int8 tests: the trace is the slow part (~15 s
    on 2 cores), the int8 twin a few seconds more.
    """
    from visiontune.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_model(finetuned_run, ExportConfig(out=str(out), quantize="int8"))


def browser_or_skip() -> tuple[str, str]:
    """Chromium and its driver, or a skip naming the Debian packages (a failure under CI: .ci/run installs them)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = []
    if not chromium or not driver:
        missing.append("Debian packages chromium and chromium-driver (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        reason = "the browser test needs " + " and ".join(missing)
        if running_in_ci():
            pytest.fail(reason + "; .ci/run installs them")
        pytest.skip(reason)
    return chromium, driver  # type: ignore[return-value]


@pytest.fixture(scope="session")
def headless_chromium() -> Iterator[Any]:
    """One headless Chromium (Selenium, the system chromedriver) for every browser test; 1280x900 window."""
    chromium, driver_path = browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
