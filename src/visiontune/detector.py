"""A feature-space "unknown" score: similarity to the k-th nearest training embedding.

The max softmax probability only sees the logits, and a network maps much of what it has never
seen onto its classes with high confidence. The embedding an image gets before the last layer
keeps more of what it looks like: an image of none of the classes lands far from every training
image. Sun et al. (ICML 2022, "Out-of-distribution detection with deep nearest neighbors"):
L2-normalise the pooled embeddings, and score an input by its distance to the k-th nearest
training embedding. Here the score is the cosine similarity to that neighbour (the same ordering
as the distance, as ||a - b||^2 = 2 - 2 cos(a, b) for unit vectors): higher = more familiar, like
the other scores.

The bank is a seeded subsample of at most `BANK_CAP` training embeddings (stored in float16 in
the bundle's `detector.safetensors`, about 10 MB at 1,280 dimensions), so bundles stay small and
scoring one image costs one (1, D) x (D, M) product.

The threshold is a conformal p-value cut on validation images (which are not in the bank): the
floor(alpha * (n + 1))-th smallest validation score, so that an image drawn like the validation
images is flagged unknown with probability at most alpha (5% by default).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save, save_file

from visiontune.errors import BundleError

DEFAULT_K = 10
BANK_CAP = 4096
DEFAULT_ALPHA = 0.05  # at most 5% of in-distribution images flagged
FILE = "detector.safetensors"
# which vectors the bank holds (embedding.py builds them): the final pooled embedding (every bundle
# before "stages", and features bundles), or each backbone stage's pooled output and it, concatenated
POOLED, STAGES = "pooled", "stages"
LAYOUTS = (POOLED, STAGES)


@dataclass(frozen=True, eq=False)  # eq=False: a tensor field has no single truth value
class KNNDetector:
    """A bank of unit-length training embeddings (M, D) and the neighbour whose similarity scores an input.

    Example:
        >>> detector = fit_knn(train_embeddings, seed=42)  # doctest: +SKIP
        >>> detector.scores(test_embeddings)  # (N,) higher = more like the training images  # doctest: +SKIP
    """

    bank: torch.Tensor  # (M, D) float32, rows of length 1
    k: int = DEFAULT_K
    embedding: str = POOLED  # the layout of the vectors it scores (see embedding.py)

    @property
    def dim(self) -> int:
        return int(self.bank.shape[1])

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N,) cosine similarity of each embedding (N, D) to its k-th nearest bank row."""
        if embeddings.shape[-1] != self.dim:
            raise BundleError(f"the detector expects {self.dim}-dimensional embeddings, got {embeddings.shape[-1]}")
        unit = F.normalize(embeddings.float(), dim=1)
        k = min(self.k, len(self.bank))
        return (unit @ self.bank.T).topk(k, dim=1).values[:, -1]

    def to_dict(self) -> dict[str, Any]:
        """What bundle.json says about it (the bank itself is in `FILE`; sha256 of its float16 values)."""
        info = {"kind": "knn", "k": self.k, "bank": len(self.bank), "dim": self.dim, "file": FILE}
        info["embedding"] = self.embedding
        return {**info, "sha256": _digest(self.bank.half())}

    def save(self, folder: Path) -> Path:
        path = folder / FILE
        save_file({"bank": self.bank.half().contiguous()}, str(path), metadata=self._metadata())
        return path

    def to_bytes(self) -> bytes:
        """The bank as safetensors bytes (what an ONNX export's metadata carries, base64-encoded)."""
        return save({"bank": self.bank.half().contiguous()}, metadata=self._metadata())

    def _metadata(self) -> dict[str, str]:
        return {"k": str(self.k), "embedding": self.embedding}

    @classmethod
    def from_bytes(cls, data: bytes, block: dict[str, Any], *, where: str) -> KNNDetector:
        """The detector of `to_bytes`' output, checked against `block`'s checksum."""
        try:
            stored = load(data)["bank"]
        except (SafetensorError, KeyError, ValueError) as exc:
            raise BundleError(f"{where}: unreadable detector bank ({exc}); export the model again") from exc
        return cls._checked(stored, block, where)

    @classmethod
    def load(cls, folder: Path, block: dict[str, Any]) -> KNNDetector:
        path = folder / str(block.get("file", FILE))
        try:
            stored = load_file(str(path))["bank"]
        except (SafetensorError, OSError, KeyError) as exc:
            raise BundleError(f"{path}: unreadable detector bank ({exc}); retrain, or use --unknown-score msp") from exc
        return cls._checked(stored, block, str(path))

    @classmethod
    def _checked(cls, stored: torch.Tensor, block: dict[str, Any], where: str) -> KNNDetector:
        if block.get("sha256") and _digest(stored) != block["sha256"]:
            raise BundleError(f"{where}: the detector bank does not match its checksum: it is damaged; retrain")
        embedding = str(block.get("embedding", POOLED))  # bundles before "stages" say nothing: pooled
        if embedding not in LAYOUTS:
            raise BundleError(f"{where}: unknown detector embedding {embedding!r}; use a newer visiontune, or retrain")
        return cls(F.normalize(stored.float(), dim=1), k=int(block.get("k", DEFAULT_K)), embedding=embedding)


def _digest(bank: torch.Tensor) -> str:
    return hashlib.sha256(bank.contiguous().numpy().tobytes()).hexdigest()


def fit_knn(
    embeddings: torch.Tensor, *, k: int = DEFAULT_K, cap: int = BANK_CAP, seed: int = 0, embedding: str = POOLED
) -> KNNDetector:
    """The detector of (N, D) training embeddings (in layout `embedding`): at most `cap` rows, drawn with `seed`."""
    embeddings = torch.as_tensor(embeddings).float()
    if len(embeddings) > cap:
        embeddings = embeddings[bank_rows(len(embeddings), cap=cap, seed=seed)]
    # stored in float16: round here so the fitted threshold sees the bank a loaded bundle will have
    bank = F.normalize(F.normalize(embeddings, dim=1).half().float(), dim=1)
    return KNNDetector(bank, k=k, embedding=embedding)


def bank_rows(count: int, *, cap: int = BANK_CAP, seed: int = 0) -> list[int]:
    """The training rows a bank keeps: all of them up to `cap`, else a seeded draw of `cap`, in order.

    A fitter that computes embeddings itself embeds only these (the same draw `fit_knn` makes).
    """
    if count <= cap:
        return list(range(count))
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:cap].sort().values.tolist()


def conformal_threshold(scores: torch.Tensor, *, alpha: float = DEFAULT_ALPHA) -> float | None:
    """The floor(alpha * (n + 1))-th smallest validation score: P(in-distribution score < it) <= alpha.

    None when there are too few validation images for that guarantee (n + 1 < 1 / alpha).
    """
    values = scores.double().sort().values
    rank = math.floor(alpha * (len(values) + 1))
    return float(values[rank - 1]) if rank >= 1 else None
