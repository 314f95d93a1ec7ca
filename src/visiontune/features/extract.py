"""`extract_features`: image files -> pooled backbone features, each image embedded once.

Files are read, hashed and decoded by a DataLoader, the frozen backbone runs under
`torch.inference_mode` (fp32 on a CPU, autocast on a GPU) in channels-last memory, and the pooled
vectors go to the feature cache keyed by the sha256 of the bytes that were actually decoded, so a
file changed between the data scan and the extraction can't be cached under its old content.

Throughput (bench/features_throughput.py, RESULTS.md) is within a few percent of a bare timm
loop over tensors already in memory. What mattered, on the 2-core CPU: channels-last and small
batches (5x), and scaling and normalising uint8 batches rather than each image. Decoding in the
main process beat both a worker process and a decoding thread (164 images/s against 119 and 122
in one run): on two cores they take cycles from the forward pass rather than filling idle ones.
Larger machines and GPUs get worker processes, as `DataModule` gives them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from visiontune import config as cfg
from visiontune.config import AugmentConfig
from visiontune.data.images import DEFAULT_MAX_PIXELS
from visiontune.data.loader import ImageItems
from visiontune.data.transforms import build_transform, pixel_transform
from visiontune.errors import ConfigError, DatasetError
from visiontune.features.cache import FeatureCache, weights_digest
from visiontune.inference import Inference
from visiontune.models.classifier import Classifier
from visiontune.models.fitted import embed
from visiontune.system import available_cpus, library_versions

log = logging.getLogger(__name__)

FLUSH_EVERY = 4096  # new vectors written to the cache at least this often: a killed run keeps them


@dataclass(frozen=True)
class View:
    """Which picture of each image is embedded: the image itself (index 0) or augmented view `index`.

    A view's random augmentation is seeded by (`seed`, `index`, the file's content hash), so the
    same image always gets the same views, whatever else is in the data set: cacheable.
    """

    index: int = 0
    augment: AugmentConfig | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.index > 0 and (self.augment is None or not self.augment.enabled):
            raise ConfigError("augmented views need an augmentation: pass augment=AugmentConfig.preset('standard')")

    def describe(self) -> dict[str, Any] | None:
        if self.index == 0:
            return None
        assert self.augment is not None
        return {"index": self.index, "seed": self.seed, "augment": cfg.to_dict(self.augment)}

    def seed_for(self, content_hash: str) -> int:
        text = f"{self.seed}:{self.index}:{content_hash}".encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


@dataclass
class Extraction:
    """Features in input order, and how many were extracted now or found in the cache."""

    features: np.ndarray  # (N, D) float32
    extracted: int
    reused: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.extracted / self.seconds if self.extracted and self.seconds > 0 else float("nan")


def extract_features(
    images: Sequence[str | Path],
    model: Classifier,
    *,
    pool: str | None = None,
    tta: bool = False,
    view: View = View(),
    hashes: Sequence[str] | None = None,
    cache: bool | str | Path = True,
    batch_size: int | None = None,
    num_workers: int | None = None,
    precision: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> Extraction:
    """Pooled features of each image file from `model`'s backbone, reusing cached ones.

    `pool` defaults to the model's own pooling; `tta` averages each image's features with its
    mirror image's; `view` picks an augmented copy instead of the image. `hashes` are the files'
    sha256 (from `load_data`'s file infos) when known, else they are computed. `cache`: True for
    the default folder (see `default_feature_dir`), a folder, or False. `batch_size` defaults to
    `default_batch_size`. The model is put in eval mode, channels-last, on the GPU when there is one.

    Example:
        >>> model = create_classifier("efficientnet_lite0", 10, image_size=112)  # doctest: +SKIP
        >>> extract_features(["a.png", "b.png"], model).features.shape  # doctest: +SKIP
        (2, 1280)
    """
    started = time.perf_counter()
    paths = [str(p) for p in images]
    hashes = list(hashes) if hashes is not None else hash_files(paths)
    if len(hashes) != len(paths):
        raise ValueError(f"{len(hashes)} hashes for {len(paths)} images")
    runner = Inference.create(model, model.preprocessing, precision=precision)
    pool = pool or model.arch["pool"]
    store = _open_cache(cache, model, pool=pool, tta=tta, view=view, precision=runner.precision)
    unique = list(dict.fromkeys(hashes))  # exact duplicate files are embedded once
    vectors = _cached(store, unique)
    if progress and vectors:
        progress(sum(h in vectors for h in hashes))
    first_path = dict(zip(reversed(hashes), reversed(paths), strict=True))  # first path of each content hash
    todo = [h for h in unique if h not in vectors]
    repeats = Counter(hashes)

    def done(content_hash: str) -> None:
        if progress:
            progress(repeats[content_hash])

    dataset = _view_dataset([first_path[h] for h in todo], todo, model, view, max_pixels)
    loader = runner.loader(dataset, batch_size=batch_size, num_workers=num_workers)
    fresh = _embed_files(runner, loader, todo, functools.partial(embed, model, pool=pool, tta=tta), store, done)
    vectors.update(fresh)
    missing = [p for p, h in zip(paths, hashes, strict=True) if h not in vectors]
    if missing:
        raise DatasetError(f"{missing[0]}: can't be decoded any more ({len(missing)} such files); run again")
    features = np.stack([vectors[h] for h in hashes]) if hashes else np.zeros((0, 0), dtype=np.float32)
    result = Extraction(features, len(fresh), len(unique) - len(todo), time.perf_counter() - started)
    log.info("features: %d extracted, %d from the cache, %.1f s", result.extracted, result.reused, result.seconds)
    return result


def hash_files(paths: Sequence[str]) -> list[str]:
    """sha256 of each file's bytes, read in threads (hashlib releases the GIL)."""

    def digest(path: str) -> str:
        try:
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as exc:
            raise DatasetError(f"{path}: can't read the file ({exc.strerror or exc})") from exc

    with ThreadPoolExecutor(max_workers=min(8, available_cpus())) as pool:
        return list(pool.map(digest, paths))


def feature_recipe(model: Classifier, *, pool: str, tta: bool, view: View, precision: str) -> dict[str, Any]:
    """Everything a vector depends on besides the file's content: the feature cache's key."""
    versions = library_versions(("torch", "torchvision", "timm", "pillow"))
    return {
        "backbone": model.arch.get("backbone"),
        "timm_name": model.arch.get("timm_name"),
        "weights_sha256": weights_digest(model.backbone),
        "preprocessing": model.preprocessing.to_dict(),
        "pool": pool,
        "tta": "flip" if tta else None,
        "view": view.describe(),
        "precision": precision,
        "versions": {k: v for k, v in versions.items() if k not in ("python", "platform")},
    }


def _cached(store: FeatureCache | None, hashes: list[str]) -> dict[str, np.ndarray]:
    if store is None:
        return {}
    known, found = store.get(hashes)
    return {h: known[i] for i, h in enumerate(hashes) if found[i]} if known is not None else {}


def _open_cache(
    cache: bool | str | Path, model: Classifier, *, pool: str, tta: bool, view: View, precision: str
) -> FeatureCache | None:
    if cache is False:
        return None
    root = None if cache is True else Path(cache)
    return FeatureCache(feature_recipe(model, pool=pool, tta=tta, view=view, precision=precision), root)


def _view_dataset(paths: list[str], hashes: list[str], model: Classifier, view: View, max_pixels: int) -> ImageItems:
    """The files as the model sees them: plain (uint8 pixels), or augmented view `view.index`, seeded per file."""
    pre = model.preprocessing
    transform = build_transform(pre, train=True, augment=view.augment) if view.index else pixel_transform(pre)
    seeds = [view.seed_for(h) for h in hashes] if view.index > 0 else None
    height, width = pre.image_size
    return ImageItems(paths, transform, max_pixels=max_pixels, draft_size=(2 * width, 2 * height), seeds=seeds,
                      digest=True)  # fmt: skip


def _embed_files(
    runner: Inference,
    loader: DataLoader,
    todo: list[str],
    forward: Callable[[torch.Tensor], torch.Tensor],
    store: FeatureCache | None,
    done: Callable[[str], None],
) -> dict[str, np.ndarray]:
    """{expected content hash: vector} for every file of `loader`; new vectors go to the cache as they come.

    A vector is cached under the hash of the bytes that were decoded, which differs from the
    expected one only when the file changed after the data scan.
    """
    fresh: dict[str, np.ndarray] = {}
    pending: list[tuple[str, np.ndarray]] = []
    for batch, vectors in runner.batches(loader, forward=forward):
        if vectors is None:
            continue
        assert batch.digests is not None  # the dataset hashes what it decodes
        for position, actual, vector in zip(batch.indices.tolist(), batch.digests, vectors.numpy(), strict=True):
            expected = todo[position]
            if actual != expected:
                log.warning("%s changed since the data scan; using its current content", loader.dataset.path(position))
            fresh[expected] = vector
            pending.append((actual, vector))
            done(expected)
        if store is not None and len(pending) >= FLUSH_EVERY:
            _flush(store, pending)
    if store is not None:
        _flush(store, pending)
    return fresh


def _flush(store: FeatureCache, pending: list[tuple[str, np.ndarray]]) -> None:
    if pending:
        store.put([h for h, _ in pending], np.stack([v for _, v in pending]))
        pending.clear()
