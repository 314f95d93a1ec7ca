"""Epoch-seeded, rank-sharded samplers: the batch order and every augmentation are functions of
(seed, epoch, sample) alone, so a resumed run sees exactly the data an uninterrupted one would,
whatever the number of worker processes.

The samplers yield `(index, item_seed)` pairs; `ImageItems` seeds torch's RNG with `item_seed`
before transforming that image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, epoch, index) over the seed space


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample in one epoch."""
    return ((seed * 1_000_003 + epoch) * _MIX + index * 2_654_435_761) % (2**63 - 1)


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled (or class-balanced) indices for this process's shard of one epoch.

    `weights` turn it into a balanced sampler: indices are drawn with replacement in proportion
    to their weight (e.g. 1 / class frequency). Shards are padded to equal length so every rank
    takes the same number of steps, as DDP requires.
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int,
        shuffle: bool = True,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
        self.size, self.seed, self.shuffle, self.pad = size, seed, shuffle, pad
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, -1))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()
        if self.shuffle:
            return torch.randperm(self.size, generator=generator).tolist()
        return list(range(self.size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order()
        if self.pad:  # every rank gets the same count; evaluation passes pad=False to score each sample once
            order += order[: math.ceil(self.size / self.world_size) * self.world_size - len(order)]
        for index in order[self.rank :: self.world_size]:
            yield index, item_seed(self.seed, self.epoch, index)


def balanced_weights(targets: Sequence[int]) -> list[float]:
    """Per-sample weights of 1 / class count, so each class is drawn equally often."""
    counts = torch.bincount(torch.as_tensor(list(targets)))
    return [1.0 / float(counts[t]) for t in targets]
