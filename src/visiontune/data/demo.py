"""The bundled demo data: a stratified Fashion-MNIST subset shipped in the package, and its export.

Fashion-MNIST (c) 2017 Zalando SE, MIT licence (see assets/FASHION_MNIST_LICENSE). The subset is
built once by scripts/build_demo_data.py from Debian's `dataset-fashion-mnist` package; `--full`
reads that package's 70,000 images directly.
"""

from __future__ import annotations

import gzip
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from visiontune.errors import DatasetError, MissingPackageError
from visiontune.system import available_cpus

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
SUBSET_FILE = "fashion_mnist_subset.npz"
DATASETS = ("fashion-mnist",)
EXPORT_SPLITS = ("train", "test")  # the folders an export holds, and all it holds

Arrays = dict[str, np.ndarray]  # {"train_images": (N, 28, 28) uint8, "train_labels": (N,) int64, "test_...": ...}


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file: the MNIST family's format of big-endian dims + raw uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_full(directory: Path = DEBIAN_DIR) -> Arrays:
    """All 70,000 images from Debian's package; a clear error naming the package when it is missing."""
    names = {"train": "train", "test": "t10k"}
    files = {
        f"{split}_{kind}": directory / f"{stem}-{kind}-{'idx3' if kind == 'images' else 'idx1'}-ubyte.gz"
        for split, stem in names.items()
        for kind in ("images", "labels")
    }
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        raise MissingPackageError(
            f"{missing[0]}: not found; install Debian's {DEBIAN_PACKAGE} package (apt-get install {DEBIAN_PACKAGE})"
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    return {k: v.astype(np.int64) if k.endswith("labels") else v for k, v in arrays.items()}


def load_subset() -> Arrays:
    """The subset shipped inside the package (300 train + 100 test images per class)."""
    asset = resources.files("visiontune.data").joinpath("assets", SUBSET_FILE)
    with asset.open("rb") as handle, np.load(handle, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files if key != "classes"}


def export_dataset(
    name: str,
    out_dir: str | Path,
    *,
    full: bool = False,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write a bundled data set as an image folder: `out/train/<class>/*.png`, `out/test/<class>/*.png`.

    Returns the number of images written per split.

    Example:
        >>> export_dataset("fashion-mnist", "demo")
        {'train': 3000, 'test': 1000}
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite=overwrite)
    arrays = load_full() if full else load_subset()
    counts = {}
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for split in EXPORT_SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _write_pngs(tmp / split, images, labels, progress)
        counts[split] = len(images)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # an interrupted export never leaves a half-written folder under the real name
    return counts


def _prepare_out_dir(out: Path, *, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DatasetError(f"{out}: folder exists and is not empty; choose another folder or pass --overwrite")
        if not (out / "train").is_dir():
            raise DatasetError(f"{out}: not a previous export (no train/ folder); refusing to overwrite it")
        others = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_SPLITS)
        if others:  # --overwrite replaces the whole folder: never with someone's files in it
            raise DatasetError(
                f"{out} holds more than a previous export ({', '.join(others[:3])}); move them or choose another"
                " folder (nothing was deleted)"
            )
    out.parent.mkdir(parents=True, exist_ok=True)


def _write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, progress: Callable[[int], None] | None) -> None:
    for cls in FASHION_MNIST_CLASSES:
        (folder / cls).mkdir(parents=True, exist_ok=True)

    def write(index: int) -> None:
        path = folder / FASHION_MNIST_CLASSES[labels[index]] / f"{index:05d}.png"
        Image.fromarray(images[index], mode="L").save(path, compress_level=1)

    with ThreadPoolExecutor(max_workers=available_cpus()) as pool:
        for start in range(0, len(images), 1000):
            list(pool.map(write, range(start, min(start + 1000, len(images)))))
            if progress:
                progress(min(1000, len(images) - start))
