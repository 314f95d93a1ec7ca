"""The loaders of one labelled data set: augmented training batches, plain evaluation batches.

Both read images through `data.loader` (one Dataset, one collate, one worker policy for every
path that decodes images). Augmented training batches are normalised float tensors, since some
augmentations (random erasing) work on them. Evaluation batches, and training batches when nothing
is random (`--augment none`, the fine-tuning default), are the evaluation pipeline's uint8 pixels,
read from the decoded-once cache and normalised on the device (`transforms.normalize_batch`): no
per-epoch resize, and a quarter of the bytes to move.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from visiontune.config import AugmentConfig, LoaderConfig
from visiontune.data.dataset import LabelledImages
from visiontune.data.decoded import DecodedCache, decoded_cache
from visiontune.data.loader import ImageItems, default_num_workers, image_loader
from visiontune.data.samplers import EpochSampler, balanced_weights
from visiontune.data.transforms import Preprocessing, build_transform, pixel_transform
from visiontune.errors import DatasetError
from visiontune.system import evaluation_batch_size

log = logging.getLogger(__name__)


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
    decode_once: bool = True  # files decoded once into data.decoded's caches, read by every epoch
    _caches: dict[bool, DecodedCache] = field(default_factory=dict, repr=False)

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    def dataset(self, split: str, *, train: bool | None = None, subset: Sequence[int] | None = None) -> ImageItems:
        """A split's dataset (only its samples at `subset`, when given): augmented float tensors when
        training augments, uint8 evaluation pixels otherwise."""
        samples = self.data.split(split)
        if subset is not None:
            samples = [samples[i] for i in subset]
        if not samples:
            raise DatasetError(f"{self.data.root}: no images in the {split} split")
        augmenting = (split == "train" if train is None else train) and self.augment.enabled
        pre = self.preprocessing
        transform = build_transform(pre, train=True, augment=self.augment) if augmenting else pixel_transform(pre)
        return ImageItems(
            [s.path for s in samples],
            transform,
            max_pixels=self.max_pixels,
            draft_size=self._draft_size(),
            targets=[self.data.class_to_idx[s.label] for s in samples],
            decoded=self._decoded(samples, augmenting),
        )

    def _decoded(self, samples: list[Any], augmenting: bool) -> DecodedCache | None:
        """The split's decoded-once cache, filled with what it lacks: presized for augmentation, final otherwise."""
        if not self.decode_once:
            return None
        if augmenting not in self._caches:
            self._caches[augmenting] = decoded_cache(
                self.preprocessing, train=augmenting, max_pixels=self.max_pixels, draft_size=self._draft_size()
            )
        cache = self._caches[augmenting]
        infos = self.data.infos
        cache.fill([s.path for s in samples], [i.sha256 if (i := infos.get(s.path)) else None for s in samples])
        return cache

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

    def eval_dataloader(
        self, split: str, *, rank: int = 0, world_size: int = 1, subset: Sequence[int] | None = None
    ) -> DataLoader:
        """Unaugmented batches of one split (or of its samples at `subset`), each sample on exactly one rank.

        Their size is evaluation's, not training's (`system.evaluation_batch_size`).
        """
        dataset = self.dataset(split, train=False, subset=subset)
        sampler = EpochSampler(len(dataset), seed=self.seed, shuffle=False, rank=rank, world_size=world_size, pad=False)
        return self._loader(dataset, sampler, batch_size=self.eval_batch_size())

    def eval_batch_size(self) -> int:
        """Images per evaluation batch on this machine at this image size."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return evaluation_batch_size(device, self.preprocessing.image_size, self.loader.batch_size,
                                     torch.get_num_threads())  # fmt: skip

    def _loader(
        self, dataset: ImageItems, sampler: EpochSampler, *, drop_last: bool = False, batch_size: int | None = None
    ) -> DataLoader:
        cfg = self.loader
        batch_size = batch_size or cfg.batch_size
        workers = default_num_workers() if cfg.num_workers is None else cfg.num_workers
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return image_loader(
            dataset,
            batch_size=batch_size,
            device=device,
            num_workers=workers,
            sampler=sampler,
            drop_last=drop_last and cfg.drop_last_train and len(sampler) > batch_size,  # never the only batch
            persistent_workers=cfg.persistent_workers,
            prefetch_factor=cfg.prefetch_factor,
        )
