from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import running_in_ci
from visiontune.data import demo
from visiontune.data.demo import FASHION_MNIST_CLASSES, export_dataset, load_full, load_subset
from visiontune.errors import DatasetError, MissingPackageError


def test_bundled_subset_is_stratified_real_fashion_mnist() -> None:
    arrays = load_subset()
    assert arrays["train_images"].shape == (3000, 28, 28) and arrays["train_images"].dtype == np.uint8
    assert np.bincount(arrays["train_labels"]).tolist() == [300] * 10
    assert np.bincount(arrays["test_labels"]).tolist() == [100] * 10
    # real photographs of clothes: varied, mostly dark background, not constant or noise
    assert 40 < arrays["train_images"].mean() < 120
    assert len({img.tobytes() for img in arrays["train_images"][:200]}) == 200


def test_export_writes_an_image_folder(tmp_path: Path) -> None:
    counts = export_dataset("fashion-mnist", tmp_path / "demo")
    assert counts == {"train": 3000, "test": 1000}
    classes = sorted(p.name for p in (tmp_path / "demo" / "train").iterdir())
    assert classes == sorted(FASHION_MNIST_CLASSES)
    files = list((tmp_path / "demo" / "test" / "sneaker").glob("*.png"))
    assert len(files) == 100
    assert Image.open(files[0]).size == (28, 28)
    assert not list(tmp_path.glob(".demo.partial"))


def test_export_refuses_to_clobber(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not empty; choose another folder or pass --overwrite"):
        export_dataset("fashion-mnist", tmp_path / "mine")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        export_dataset("fashion-mnist", tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_full_needs_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(MissingPackageError, match="apt-get install dataset-fashion-mnist"):
        load_full(tmp_path)


def test_full_data_set_reads_70000_images() -> None:
    if not demo.DEBIAN_DIR.is_dir():
        if running_in_ci():
            pytest.fail("Debian package dataset-fashion-mnist is not installed (.ci/run installs it)")
        pytest.skip("needs Debian package dataset-fashion-mnist")
    arrays = load_full()
    assert len(arrays["train_images"]) == 60000 and len(arrays["test_images"]) == 10000
    assert np.bincount(arrays["test_labels"]).tolist() == [1000] * 10
    subset = load_subset()
    # the bundled subset is drawn from these very images
    full_set = {img.tobytes() for img in arrays["train_images"]}
    assert all(img.tobytes() in full_set for img in subset["train_images"][:50])
