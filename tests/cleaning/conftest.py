"""A small real data set with four known wrong labels, and what `clean` makes of it (shared, read-only)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_class_folders
from visiontune.cleaning import CleanResult

# (file, wrong class folder it is moved into): a trouser filed as a sneaker, and so on
MOVED = {
    "trouser_003.png": "sneaker",
    "sneaker_005.png": "t-shirt_top",
    "t-shirt_top_007.png": "trouser",
    "trouser_011.png": "t-shirt_top",
}


def noisy_folder(root: Path, fashion: dict[str, np.ndarray]) -> Path:
    """root/{t-shirt_top,trouser,sneaker}/*.png, 15 real images each, then the MOVED files put in wrong folders."""
    write_class_folders(root, fashion, per_class=15)
    for name, wrong in MOVED.items():
        shutil.move(root / name.rsplit("_", 1)[0] / name, root / wrong / name)
    return root


@pytest.fixture(scope="session")
def noisy_data(tmp_path_factory: pytest.TempPathFactory, fashion: dict[str, np.ndarray]) -> Path:
    return noisy_folder(tmp_path_factory.mktemp("noisy") / "data", fashion)


@pytest.fixture(scope="session")
def cleaned(noisy_data: Path, tmp_path_factory: pytest.TempPathFactory) -> CleanResult:
    """`clean(noisy_data)` with efficientnet_lite0 at 64 px, 3 folds, outputs in a temporary folder."""
    from visiontune.cleaning import clean

    out = tmp_path_factory.mktemp("clean-out")
    with pytest.MonkeyPatch.context() as patch:  # session fixtures start before the autouse cache isolation
        patch.setenv("VISIONTUNE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        return clean(noisy_data, model="efficientnet_lite0", image_size=64, folds=3, out_dir=out)
