"""Decode once: pixels of each image file kept as uint8 on disk, memory-mapped, read by every epoch.

Fine-tuning reads every training image once an epoch, and decoding a 400x533 JPEG costs more than
the rest of its journey to the model (bench/RESULTS.md, issue 18). So training decodes each file
once into one of two *recipes*, the pixels stored as they come out:

- `presized`: the upright RGB image shrunk (aspect kept, never enlarged) to a little above the
  training size, as fastai's presizing does. The training pipeline (resize, random crop, flips)
  still runs on it every epoch, so augmentation is as random as before, at a fraction of the cost;
- `evaluation`: the evaluation pipeline's own (H, W, 3) output at the model's size, so validation
  during training reads exactly the pixels it would have decoded.

Like the feature cache (features/cache.py), entries are keyed by the sha256 of the file's bytes,
so a changed file is a miss and is decoded again, and one folder per recipe (named by its hash)
holds append-only shards. A shard is a raw uint8 blob plus a safetensors index (content hashes,
offsets, shapes, the blob's length), each written atomically, the blob first: a killed run leaves
no index without its blob, and a blob whose length disagrees with its index is ignored (its images
are decoded again), never read as pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from visiontune.data.fileinfo import default_cache_path
from visiontune.data.images import DEFAULT_MAX_PIXELS, open_image
from visiontune.errors import ImageError
from visiontune.io import atomic_path, atomic_write_json
from visiontune.system import available_cpus

log = logging.getLogger(__name__)

FORMAT = "visiontune.decoded/1"
PRESIZE = 1.25  # the presized copy covers this multiple of the training size: room for zoom crops
SHARD_IMAGES = 512  # images decoded between two shard writes: memory stays flat, a killed run keeps them
_DIGEST = 32

Pixels = Callable[[Image.Image], np.ndarray]  # an upright RGB image -> (H, W, 3) uint8


def default_decoded_dir() -> Path:
    """~/.cache/visiontune/decoded (beside the feature cache; $VISIONTUNE_CACHE_DIR moves both)."""
    return default_cache_path().parent / "decoded"


def presized(size: tuple[int, int], *, factor: float = PRESIZE) -> Pixels:
    """Shrink (never enlarge) keeping the aspect, so the image still covers `factor` x `size` (h, w)."""
    cover_h, cover_w = (math.ceil(factor * s) for s in size)

    def shrink(image: Image.Image) -> np.ndarray:
        width, height = image.size
        scale = max(cover_h / height, cover_w / width)
        if scale < 1.0:
            target = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    return shrink


def decoded_cache(
    pre: Any, *, train: bool, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: tuple[int, int] | None = None
) -> DecodedCache:
    """The cache for one `transforms.Preprocessing`: presized images for training, final evaluation pixels otherwise.

    Resize "crop" evaluation enlarges before its centre crop, so its pixels can't be fed back through
    the pipeline unchanged: it reads presized images too.
    """
    from visiontune.data.transforms import pixel_transform  # torchvision only when a cache is built

    common = {"max_pixels": max_pixels, "draft_size": draft_size}
    if train or pre.resize_mode == "crop":
        cover = [math.ceil(PRESIZE * s) for s in pre.image_size]
        recipe = {"kind": "presized", "cover": cover, "draft": draft_size}
        return DecodedCache(recipe, presized(pre.image_size), **common)
    to_pixels = pixel_transform(pre)
    recipe = {"kind": "evaluation", "preprocessing": pre.to_dict(), "draft": draft_size}
    return DecodedCache(recipe, lambda image: to_pixels(image).numpy(), final=True, **common)


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DecodedCache:
    """Decoded pixels of one recipe, looked up by content hash.

    `final` says whether the stored pixels are what the loader hands on (the evaluation recipe)
    or an image the per-epoch transform still runs on (the presized recipe).

    Example:
        >>> cache = DecodedCache({"kind": "presized", "cover": [140, 140]}, presized((112, 112)))  # doctest: +SKIP
        >>> cache.fill(paths, digests)  # decodes the files it lacks, once  # doctest: +SKIP
        >>> cache.get(digests[0]).shape  # doctest: +SKIP
        (140, 187, 3)
    """

    def __init__(
        self,
        recipe: dict[str, Any],
        pixels: Pixels,
        *,
        final: bool = False,
        root: str | Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft_size: tuple[int, int] | None = None,
    ) -> None:
        self.recipe, self.pixels, self.final = recipe, pixels, final
        self.max_pixels, self.draft_size = max_pixels, draft_size
        self.root = Path(root) if root is not None else default_decoded_dir()
        text = json.dumps({"format": FORMAT, **recipe}, sort_keys=True, separators=(",", ":"))
        self.folder = self.root / hashlib.sha256(text.encode()).hexdigest()[:32]
        self._index: dict[bytes, tuple[int, int, tuple[int, int, int]]] | None = None  # digest -> (blob, offset, shape)
        self._blobs: list[np.ndarray] = []

    def __getstate__(self) -> dict[str, Any]:  # worker processes map the blobs themselves
        return {**self.__dict__, "_index": None, "_blobs": []}

    # ---- reading ---------------------------------------------------------------------------
    def get(self, digest: str) -> np.ndarray | None:
        """A read-only (H, W, 3) uint8 view of the pixels of the file with this sha256, or None."""
        hit = self._load().get(bytes.fromhex(digest))
        if hit is None:
            return None
        blob, offset, shape = hit
        return self._blobs[blob][offset : offset + math.prod(shape)].reshape(shape)

    def __contains__(self, digest: str) -> bool:
        return bytes.fromhex(digest) in self._load()

    def __len__(self) -> int:
        return len(self._load())

    def _load(self) -> dict[bytes, tuple[int, int, tuple[int, int, int]]]:
        if self._index is None:
            self._index, self._blobs = {}, []
            for path in sorted(self.folder.glob("*.index.safetensors")) if self.folder.is_dir() else []:
                self._add(path)
        return self._index

    def _add(self, index_path: Path) -> None:
        assert self._index is not None
        blob_path = index_path.with_name(index_path.name.replace(".index.safetensors", ".pixels"))
        try:
            arrays = load_file(str(index_path))
            keys, offsets, shapes, length = arrays["sha256"], arrays["offset"], arrays["shape"], arrays["length"]
            ok = keys.shape == (len(offsets), _DIGEST) and shapes.shape == (len(offsets), 3)
            ok = ok and blob_path.is_file() and blob_path.stat().st_size == int(length[0])
            ok = ok and bool(np.all(offsets + shapes.prod(axis=1) <= int(length[0])))
            blob = np.memmap(blob_path, dtype=np.uint8, mode="r") if ok and int(length[0]) else np.zeros(0, np.uint8)
        except (SafetensorError, OSError, KeyError, ValueError, IndexError) as exc:
            log.warning("ignoring unreadable decoded-image cache file %s (%s); its images will be decoded again",
                        index_path, exc)  # fmt: skip
            return
        if not ok:
            log.warning("ignoring decoded-image cache file %s: its pixels don't match its index", index_path)
            return
        self._blobs.append(blob)
        for key, offset, shape in zip(keys, offsets.tolist(), shapes.tolist(), strict=True):
            self._index[key.tobytes()] = (len(self._blobs) - 1, offset, tuple(shape))

    # ---- writing ---------------------------------------------------------------------------
    def fill(self, paths: Sequence[str | Path], digests: Sequence[str | None] | None = None) -> int:
        """Decode the files whose content isn't cached yet (in threads) and store them; how many were added.

        `digests` (sha256 per path, e.g. from `load_data`'s file infos) saves reading the files to
        hash them; a file that fails to decode is skipped here and reported by the loader as usual.
        """
        known = digests if digests is not None else [None] * len(paths)
        todo = [(str(p), d) for p, d in zip(paths, known, strict=True) if d is None or d not in self]
        if todo and not self._room_for(len(todo)):
            return 0
        added = 0
        self._load()  # before the threads ask
        with ThreadPoolExecutor(max(1, available_cpus())) as pool:  # PIL decodes and resizes without the GIL
            for start in range(0, len(todo), SHARD_IMAGES):
                done = [r for r in pool.map(self._decode, todo[start : start + SHARD_IMAGES]) if r is not None]
                self.put([d for d, _ in done], [a for _, a in done])
                added += len(done)
        if added:
            log.info("decoded %d images once into %s", added, self.folder)
        return added

    def _room_for(self, count: int) -> bool:
        """Whether `count` images fit in a quarter of the free disk (an estimate: 3 bytes a pixel, 4:3 photos)."""
        height, width = self.recipe.get("cover") or self.recipe["preprocessing"]["image_size"]
        need = count * height * width * 3 * 4 // 3
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if need > free // 4:
            log.warning("not keeping decoded images in %s: %d images need ~%d MB of the %d MB free; every epoch"
                        " decodes them instead", self.root, count, need >> 20, free >> 20)  # fmt: skip
            return False
        return True

    def _decode(self, item: tuple[str, str | None]) -> tuple[str, np.ndarray] | None:
        path, known = item
        try:
            data = Path(path).read_bytes()
            digest = known or file_digest(data)
            if known is None and digest in self:  # unknown until read: already cached after all
                return None
            image = open_image(io.BytesIO(data), max_pixels=self.max_pixels, draft_size=self.draft_size)
        except (ImageError, OSError):
            return None
        return file_digest(data) if known else digest, self.pixels(image)

    def put(self, digests: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        """Store (H, W, 3) uint8 `arrays` under their files' sha256 as one new shard."""
        fresh = {d: np.ascontiguousarray(a, dtype=np.uint8) for d, a in zip(digests, arrays, strict=True)}
        if not fresh:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "recipe.json").is_file():
            atomic_write_json(self.folder / "recipe.json", {"format": FORMAT, **self.recipe})
        stem = self.folder / f"{time.time_ns():020d}-{os.getpid()}"
        sizes = [a.size for a in fresh.values()]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        with atomic_path(stem.with_name(stem.name + ".pixels")) as tmp, open(tmp, "wb") as out:
            for array in fresh.values():
                out.write(array.tobytes())
        index = {
            "sha256": np.frombuffer(b"".join(bytes.fromhex(d) for d in fresh), dtype=np.uint8).reshape(-1, _DIGEST),
            "offset": offsets,
            "shape": np.array([a.shape for a in fresh.values()], dtype=np.int64).reshape(-1, 3),
            "length": np.array([sum(sizes)], dtype=np.int64),
        }
        index_path = stem.with_name(stem.name + ".index.safetensors")
        with atomic_path(index_path) as tmp:
            save_file(index, str(tmp), metadata={"format": FORMAT})
        if self._index is not None:
            self._add(index_path)


def cached_or_none(cache: DecodedCache, data: bytes) -> tuple[np.ndarray | None, str]:
    """(the cached pixels or None, the sha256) of a file's bytes: what the loader asks per image."""
    digest = file_digest(data)
    return cache.get(digest), digest
