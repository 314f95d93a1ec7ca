"""The feature cache: pooled embeddings on disk, keyed by file content and by everything that made them.

One folder per *recipe* (backbone, its exact weights, preprocessing, pooling, mirror averaging,
augmented view, precision, library versions), named by the hash of that description; inside it,
safetensors shards that map content hashes (sha256 of the file's bytes) to float32 vectors.

- A second run over the same images finds every vector; new images are the only ones extracted.
- A changed image has another content hash, and a changed backbone (other weights, even one
  fine-tuned tensor) or preprocessing another folder, so a stale vector is never found.
- Shards are only ever added, each written atomically, so a killed run keeps what it flushed and
  concurrent runs don't clash; many small shards are merged into one now and then.

safetensors rather than pickle or .npy pairs: one self-describing file per shard (the recipe sits
in its header), written with one rename, read without executing anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from visiontune.data.fileinfo import default_cache_path
from visiontune.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "visiontune.features/1"
MERGE_AT = 16  # shards in one folder before they are merged into one
_DIGEST = 32  # bytes of a sha256


def default_feature_dir() -> Path:
    """~/.cache/visiontune/features (beside files.sqlite; $VISIONTUNE_CACHE_DIR moves both)."""
    return default_cache_path().parent / "features"


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every tensor of `module.state_dict()` (names, dtypes, shapes and bytes).

    The identity of a backbone's weights, whatever file or package they came from: about 20 ms
    for EfficientNet-Lite0's 13 MB.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}\n".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def recipe_key(recipe: dict[str, Any]) -> str:
    """The folder name of a recipe: a hash of its canonical JSON."""
    text = json.dumps({"format": FORMAT, **recipe}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FeatureCache:
    """Vectors of one recipe, looked up by content hash (64 hex characters).

    Example:
        >>> cache = FeatureCache({"backbone": "efficientnet_lite0", "weights": "..."})  # doctest: +SKIP
        >>> vectors, found = cache.get(["9f86d0..."])  # doctest: +SKIP
    """

    def __init__(self, recipe: dict[str, Any], root: str | Path | None = None) -> None:
        self.recipe = recipe
        self.root = Path(root) if root is not None else default_feature_dir()
        self.folder = self.root / recipe_key(recipe)
        self._index: dict[bytes, tuple[int, int]] | None = None  # digest -> (shard, row)
        self._shards: list[np.ndarray] = []  # (M, D) float32 each

    # ---- reading ---------------------------------------------------------------------------
    def get(self, hashes: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """(vectors (N, D) float32 with zero rows where missing, or None when nothing is known; found (N,) bool)."""
        index = self._load()
        where = [index.get(bytes.fromhex(h)) for h in hashes]
        found = np.array([w is not None for w in where], dtype=bool)
        if not found.any():
            return None, found
        vectors = np.zeros((len(hashes), self._shards[0].shape[1]), dtype=np.float32)
        for row, hit in enumerate(where):
            if hit is not None:
                vectors[row] = self._shards[hit[0]][hit[1]]
        return vectors, found

    def _load(self) -> dict[bytes, tuple[int, int]]:
        if self._index is None:
            self._index, self._shards = {}, []
            for path in self._shard_paths():
                self._add(path)
        return self._index

    def _shard_paths(self) -> list[Path]:
        return sorted(self.folder.glob("*.safetensors")) if self.folder.is_dir() else []

    def _add(self, path: Path) -> None:
        assert self._index is not None
        try:
            arrays = load_file(str(path))
            keys, vectors = arrays["sha256"], arrays["features"]
        except (SafetensorError, OSError, KeyError) as exc:
            log.warning("ignoring unreadable feature cache file %s (%s); its images will be extracted again", path, exc)
            return
        width = self._shards[0].shape[1] if self._shards else vectors.shape[1]
        if keys.shape != (len(vectors), _DIGEST) or vectors.ndim != 2 or vectors.shape[1] != width:
            log.warning("ignoring feature cache file %s: its arrays don't match the others", path)
            return
        shard = len(self._shards)
        self._shards.append(vectors.astype(np.float32, copy=False))
        for row, key in enumerate(keys):
            self._index[key.tobytes()] = (shard, row)

    # ---- writing ---------------------------------------------------------------------------
    def put(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Add vectors (N, D) for `hashes` in a new shard; merge shards when there are many."""
        if len(hashes) == 0:
            return
        keys = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=np.uint8).reshape(-1, _DIGEST)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "recipe.json").is_file():
            atomic_write_json(self.folder / "recipe.json", {"format": FORMAT, **self.recipe})
        path = self._write(keys, vectors)
        if self._index is not None:
            self._add(path)
        if len(self._shard_paths()) >= MERGE_AT:
            self.merge()

    def merge(self) -> None:
        """Rewrite every shard as one (readers that listed the old ones just miss them: never wrong)."""
        old = self._shard_paths()
        self._index = None
        index = self._load()
        if not index:
            return
        keys = np.frombuffer(b"".join(index), dtype=np.uint8).reshape(-1, _DIGEST)
        vectors = np.stack([self._shards[s][r] for s, r in index.values()])
        merged = self._write(keys, vectors)
        for path in old:
            if path != merged:
                path.unlink(missing_ok=True)
        self._index = None

    def _write(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        path = self.folder / f"{time.time_ns():020d}-{os.getpid()}.safetensors"
        meta = {"format": FORMAT, "recipe": json.dumps(self.recipe, sort_keys=True)}
        with atomic_path(path) as tmp:
            save_file({"sha256": keys, "features": vectors}, str(tmp), metadata=meta)
        return path
