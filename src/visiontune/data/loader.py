"""The one image loader: a Dataset of inputs, a collate that keeps going past bad files, a worker policy.

Training, training's validation, `evaluate`, feature extraction and `predict` all read images
through `ImageItems` and `image_loader`, so a file that fails to decode is treated the same way
everywhere: it is left out of its batch and reported with its reason, never an exception that
stops a folder of good files. Memory stays flat in the number of images: the dataset holds paths
as a numpy array (nothing for worker processes to copy on access), never decoded pixels.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from visiontune.data.decoded import DecodedCache, cached_or_none
from visiontune.data.images import DEFAULT_MAX_PIXELS, from_array, open_image, to_rgb
from visiontune.errors import ImageError
from visiontune.system import available_cpus

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor
Row = tuple[torch.Tensor | None, int, str | None, str | None, int]  # pixels, position, error, digest, target


@dataclass
class Batch:
    """The images of one batch that decoded, which inputs they were, and the ones that failed.

    `pixels` is (B, H, W, 3) uint8 (evaluation pipelines) or (B, 3, H, W) normalised float
    (augmented training views); None when every input of the batch failed.
    """

    pixels: torch.Tensor | None
    indices: torch.Tensor  # (B,) positions in the dataset
    failures: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)
    digests: list[str] | None = None  # sha256 of the bytes decoded, when the dataset was asked for them
    targets: torch.Tensor | None = None  # (B,) class indices, for a labelled dataset

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> Batch:
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class ImageItems(Dataset):
    """(pixels, position, error, digest, target) per input: files, PIL images, arrays or tensors.

    `transform` turns an RGB PIL image into pixels. A key may be `(index, seed)` (from
    `EpochSampler`), and `seeds` may give each input its own seed: the random augmentation then
    repeats exactly, which makes training resumable and augmented feature views cacheable.
    `digest=True` also returns the sha256 of the bytes that were decoded (the feature cache's key);
    `targets` are class indices for labelled inputs (-1 when there are none).
    """

    def __init__(
        self,
        items: Sequence[ImageInput],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft_size: tuple[int, int] | None = None,
        seeds: Sequence[int] | None = None,
        digest: bool = False,
        targets: Sequence[int] | None = None,
        decoded: DecodedCache | None = None,
    ) -> None:
        files = all(isinstance(i, str | Path) for i in items)
        # fixed-width unicode for files: no refcounts for worker processes to touch
        self.items: Any = np.array([str(i) for i in items]) if files and items else list(items)
        self.files = files
        self.transform, self.max_pixels, self.draft_size = transform, max_pixels, draft_size
        self.seeds = np.array(seeds, dtype=np.int64) if seeds is not None else None
        self.digest = digest
        self.targets = np.asarray(targets if targets is not None else [-1] * len(items), dtype=np.int64)
        self.decoded = decoded  # files decoded once (data.decoded): read from it, decoded only when missing

    def __len__(self) -> int:
        return len(self.items)

    def path(self, index: int) -> str | None:
        """The file behind input `index`, or None for an in-memory image."""
        item = self.items[index]
        return str(item) if isinstance(item, str | Path | np.str_) else None

    def __getitem__(self, key: int | tuple[int, int]) -> Row:
        index, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None and self.seeds is not None:
            seed = int(self.seeds[index])
        try:
            image, digest = self._open(self.items[index])
            if isinstance(image, torch.Tensor):  # the decoded cache's final pixels: nothing left to do
                return image, index, None, digest if self.digest else None, int(self.targets[index])
        except ImageError as exc:
            return None, index, exc.reason, None, -1
        except OSError as exc:
            return None, index, exc.strerror or str(exc), None, -1
        if seed is not None:
            torch.manual_seed(seed)
        return self.transform(image), index, None, digest, int(self.targets[index])

    def _open(self, item: ImageInput) -> tuple[Image.Image, str | None]:
        if isinstance(item, str | Path | np.str_):
            path = Path(str(item))
            if not path.exists():
                raise ImageError(path, "no such file")
            if path.is_dir():
                raise ImageError(path, "is a folder; give image files, or the folder to predict on each image in it")
            data = path.read_bytes()
            if self.decoded is not None:
                return self._from_cache(self.decoded, data)
            image = open_image(io.BytesIO(data), max_pixels=self.max_pixels, draft_size=self.draft_size)
            return image, hashlib.sha256(data).hexdigest() if self.digest else None
        if isinstance(item, Image.Image):
            return to_rgb(item), None
        if isinstance(item, np.ndarray):
            return from_array(item), None
        if isinstance(item, torch.Tensor):
            return _tensor_image(item), None
        raise ImageError("<input>", f"can't read a {type(item).__name__}; give a path, PIL image, array or tensor")

    def _from_cache(self, cache: DecodedCache, data: bytes) -> tuple[Image.Image | torch.Tensor, str]:
        """The file's pixels from the decoded cache when it has them (a changed file is a miss and is decoded)."""
        pixels, digest = cached_or_none(cache, data)
        if pixels is None:
            return open_image(io.BytesIO(data), max_pixels=self.max_pixels, draft_size=self.draft_size), digest
        if cache.final:
            return torch.from_numpy(np.array(pixels)), digest
        return Image.fromarray(np.array(pixels)), digest


def collate_items(rows: list[Row]) -> Batch:
    """Stack the inputs that decoded; list the others with their reasons (logged by whoever reads the batch)."""
    ok = [row for row in rows if row[0] is not None]
    failures = [(row[1], row[2] or "can't be read") for row in rows if row[0] is None]
    pixels = torch.stack([row[0] for row in ok]) if ok else None  # type: ignore[misc]
    indices = torch.tensor([row[1] for row in ok], dtype=torch.long)
    digests = [row[3] for row in ok] if ok and ok[0][3] is not None else None
    targets = torch.tensor([row[4] for row in ok], dtype=torch.long)
    return Batch(pixels, indices, failures, digests, targets)


def default_num_workers(*, gpu: bool | None = None) -> int:
    """Loader processes that help rather than compete.

    With a GPU, decoding runs beside the device's work: every core but one, at most 8 (more rarely
    helps one GPU). On a CPU the model's own threads already use every core, and a loader process
    only takes cycles from them (bench/train_throughput.py on 2 cores: 0.87x of a plain loop with
    one worker, 0.92x with none; feature extraction 164 images/s in the main process against 119
    with a worker), so small machines decode in the main process and large ones give a quarter of
    their cores to loading.
    """
    cpus = available_cpus()
    if torch.cuda.is_available() if gpu is None else gpu:
        return min(8, max(0, cpus - 1))
    return 0 if cpus <= 4 else min(8, cpus // 4)


def image_loader(
    dataset: ImageItems,
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int | None = None,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int = 4,
) -> DataLoader:
    """A DataLoader of `Batch`es with the worker policy above.

    In-memory inputs are never sent to worker processes, and a few files (under four batches)
    don't pay a process start-up. `num_workers` overrides the policy for files.
    """
    workers = default_num_workers(gpu=device.type == "cuda") if num_workers is None else num_workers
    count = len(sampler) if sampler is not None else len(dataset)  # type: ignore[arg-type]
    if not dataset.files or (num_workers is None and count < 4 * batch_size):
        workers = 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        collate_fn=collate_items,
    )


def _tensor_image(tensor: torch.Tensor) -> Image.Image:
    """A (3, H, W) or (1, H, W) tensor (uint8 0..255 or float 0..1, torchvision's layout) or an (H, W) one."""
    tensor = tensor.detach().cpu()
    if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
        tensor = tensor.permute(1, 2, 0)
    return from_array(tensor.numpy())


def log_failures(dataset: ImageItems, batch: Batch) -> None:
    """One warning per input of `batch` that failed to decode, naming its file."""
    for index, reason in batch.failures:
        log.warning("skipping %s: %s", dataset.path(index) or f"input {index}", reason)
