"""Datasets and DataLoaders: decoded lazily, one file at a time, with seeded workers.

Memory stays flat in the number of images: a dataset holds paths and labels as numpy arrays
(no per-sample Python objects for worker processes to copy on access), never decoded pixels.
A file that fails to decode at load time is dropped from its batch with one warning.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from visiontune.config import AugmentConfig, LoaderConfig
from visiontune.data.dataset import LabelledImages
from visiontune.data.images import open_image
from visiontune.data.samplers import EpochSampler, balanced_weights
from visiontune.data.sources import Sample
from visiontune.data.transforms import Preprocessing, build_transform
from visiontune.errors import DatasetError, ImageError
from visiontune.system import available_cpus

log = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """(image tensor, class index, sample index) for a list of samples; None for a file that won't decode.

    The sample index lets evaluation gather predictions from several processes back into order.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_to_idx: dict[str, int],
        transform: Callable[[Any], torch.Tensor],
        *,
        max_pixels: int = 64_000_000,
        draft_size: tuple[int, int] | None = None,
    ) -> None:
        unknown = {s.label for s in samples} - set(class_to_idx)
        if unknown:
            raise DatasetError(f"labels not in the class list: {', '.join(sorted(unknown))}")
        self.paths = np.array([str(s.path) for s in samples])  # fixed-width unicode: no refcounts to touch
        self.targets = np.array([class_to_idx[s.label] for s in samples], dtype=np.int64)
        self.transform = transform
        self.max_pixels = max_pixels
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int] | None:
        """`key` is an index, or (index, seed) from an EpochSampler: then the augmentation is seeded too."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            torch.manual_seed(seed)
        path = str(self.paths[index])
        try:
            image = open_image(path, max_pixels=self.max_pixels, draft_size=self.draft_size)
        except ImageError as exc:
            log.warning("skipping %s: %s", path, exc.reason)
            return None
        return self.transform(image), int(self.targets[index]), index


def collate_skipping_none(batch: list[tuple[torch.Tensor, int, int] | None]) -> list[torch.Tensor] | None:
    """default_collate without the files that failed to decode; None when the whole batch failed."""
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each worker from torch's per-worker seed, so augmentation repeats."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_num_workers(*, gpu: bool | None = None) -> int:
    """Loader processes that help rather than compete.

    With a GPU, decoding runs beside the device's work: every core but one, at most 8 (more rarely
    helps one GPU). On a CPU the model's own threads already use every core, and a loader process
    only takes cycles from them (bench/train_throughput.py on 2 cores: 0.87x of a plain loop with
    one worker, 0.92x with none), so small machines decode in the main process and large ones give
    a quarter of their cores to loading.
    """
    cpus = available_cpus()
    if torch.cuda.is_available() if gpu is None else gpu:
        return min(8, max(0, cpus - 1))
    return 0 if cpus <= 4 else min(8, cpus // 4)


@dataclass
class DataModule:
    """The loaders for one data set, preprocessing and augmentation setting.

    Example:
        >>> dm = DataModule(load_data("photos"), Preprocessing(image_size=(224, 224), mean=..., std=...))
        >>> images, targets = next(iter(dm.train_dataloader()))  # (B, 3, 224, 224), (B,)
        >>> valid = dm.eval_dataloader("valid")
    """

    data: LabelledImages
    preprocessing: Preprocessing
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig.preset("standard"))
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    seed: int = 42
    max_pixels: int = 64_000_000

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    def dataset(self, split: str, *, train: bool | None = None) -> ImageDataset:
        """The dataset of one split; training transforms (augmentation) only for `train`."""
        samples = self.data.split(split)
        if not samples:
            raise DatasetError(f"{self.data.root}: no images in the {split} split")
        augmenting = split == "train" if train is None else train
        transform = build_transform(self.preprocessing, train=augmenting, augment=self.augment if augmenting else None)
        draft = self._draft_size()
        return ImageDataset(samples, self.data.class_to_idx, transform, max_pixels=self.max_pixels, draft_size=draft)

    def _draft_size(self) -> tuple[int, int]:
        # JPEG draft decoding at >= 2x the target keeps random crops sharp while skipping most of the decode
        height, width = self.preprocessing.image_size
        return (2 * width, 2 * height)

    def train_dataloader(self, *, rank: int = 0, world_size: int = 1, balanced: bool = False) -> DataLoader:
        """Shuffled training batches; call `loader.sampler.set_epoch(epoch)` before each epoch."""
        dataset = self.dataset("train")
        weights = balanced_weights(dataset.targets.tolist()) if balanced else None
        sampler = EpochSampler(len(dataset), seed=self.seed, weights=weights, rank=rank, world_size=world_size)
        return self._loader(dataset, sampler, drop_last=True)

    def eval_dataloader(self, split: str, *, rank: int = 0, world_size: int = 1) -> DataLoader:
        """Unaugmented batches of one split, each sample on exactly one rank."""
        dataset = self.dataset(split, train=False)
        sampler = EpochSampler(len(dataset), seed=self.seed, shuffle=False, rank=rank, world_size=world_size, pad=False)
        return self._loader(dataset, sampler)

    def _loader(self, dataset: ImageDataset, sampler: EpochSampler, *, drop_last: bool = False) -> DataLoader:
        cfg = self.loader
        workers = default_num_workers() if cfg.num_workers is None else cfg.num_workers
        pin = torch.cuda.is_available() if cfg.pin_memory is None else cfg.pin_memory
        # never drop the only batch of a small data set
        drop = drop_last and cfg.drop_last_train and len(sampler) > cfg.batch_size
        return DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=pin,
            drop_last=drop,
            persistent_workers=cfg.persistent_workers and workers > 0,
            prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
            worker_init_fn=seed_worker,
            collate_fn=collate_skipping_none,
        )
