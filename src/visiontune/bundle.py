"""The model bundle: one folder that predict, evaluate, export and serve load.

    model/
      bundle.json        architecture, classes, preprocessing, calibration, metrics, versions, weights' sha256
      model.safetensors  the weights
      detector.safetensors  training embeddings of the "knn" unknown score (bundles that have one)

No pickle anywhere: the architecture is rebuilt from JSON and the weights are plain tensors, so a
bundle loads without the training code, the user's label functions, or trust in the file (the
class of failure fastai's pickled learners have). Loading checks what would otherwise fail later or
silently: the weights against their checksum (flipped bits give NaN, not an error), and the JSON
against the weights (as many classes as the head has outputs, a sane input size). Bundles written
before the checksum load without that one check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from visiontune.calibration import Calibration
from visiontune.data.transforms import Preprocessing
from visiontune.detector import KNNDetector
from visiontune.errors import BundleError, VisiontuneError
from visiontune.io import writing
from visiontune.models import MEMBERS_KEY, build_model
from visiontune.system import library_versions

FORMAT = "visiontune.bundle/1"
META_FILE = "bundle.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class BundleMeta:
    """Everything about a model except its weights."""

    arch: dict[str, Any]
    classes: list[str]
    preprocessing: Preprocessing
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: Calibration = field(default_factory=Calibration)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=library_versions)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    weights_sha256: str | None = None  # of model.safetensors; set by save_bundle (None: an older bundle)

    @property
    def architecture(self) -> str:
        """The backbone's name, with "x N" for an ensemble of N members (what reports and /info show)."""
        name = str(self.arch.get("backbone", self.arch.get("name", "model")))
        members = len(self.arch.get(MEMBERS_KEY) or [])
        return f"{name} x{members}" if members > 1 else name

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": FORMAT,
            "arch": self.arch,
            "classes": self.classes,
            "preprocessing": self.preprocessing.to_dict(),
            "metrics": self.metrics,
            "calibration": self.calibration.to_dict(),
            "training": self.training,
            "versions": self.versions,
            "created": self.created,
        }
        if self.weights_sha256 is not None:
            data["weights"] = {"file": WEIGHTS_FILE, "sha256": self.weights_sha256}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: Path) -> BundleMeta:
        if data.get("format") != FORMAT:
            raise BundleError(f"{where}: bundle format {data.get('format')!r} is not {FORMAT!r}; re-export it")
        try:
            return cls(
                arch=data["arch"],
                classes=_classes(data["classes"]),
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                metrics=data.get("metrics", {}),
                calibration=Calibration.from_dict(data.get("calibration")),
                training=data.get("training", {}),
                versions=data.get("versions", {}),
                created=data.get("created", ""),
                weights_sha256=_checksum(data.get("weights")),
            )
        except KeyError as exc:
            raise BundleError(f"{where / META_FILE}: incomplete bundle metadata (no {exc}); re-export it") from exc
        except (AttributeError, TypeError, ValueError, VisiontuneError) as exc:
            raise BundleError(f"{where / META_FILE}: {exc}; re-export or retrain") from exc


def _classes(value: Any) -> list[str]:
    """`classes` as stored: a list of distinct, non-empty strings (a string is not a list of its letters)."""
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise BundleError(f"`classes` must be a list of class names. Received: {str(value)[:80]!r}")
    if len(set(value)) != len(value):
        twice = sorted({c for c in value if value.count(c) > 1})
        raise BundleError(f"`classes` names a class twice: {', '.join(twice[:3])}")
    return list(value)


def _checksum(block: Any) -> str | None:
    if block is None:
        return None
    digest = block.get("sha256") if isinstance(block, dict) else None
    if not isinstance(digest, str) or len(digest) != 64:
        raise BundleError(f"`weights.sha256` must be a sha256 hex digest. Received: {str(block)[:80]!r}")
    return digest


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def save_bundle(path: str | Path, model: torch.nn.Module, meta: BundleMeta) -> Path:
    """Write the bundle folder atomically: a half-written bundle never replaces a good one."""
    target = Path(path)
    with writing(target):  # a full disk or a read-only folder: one line, and the old bundle stays
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
            save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT})
            meta = dataclasses.replace(meta, weights_sha256=file_sha256(staging / WEIGHTS_FILE))
            meta = _save_detector(staging, meta)
            (staging / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
            _swap_in(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _swap_in(staging: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def resolve_bundle_path(path: str | Path) -> Path:
    """A bundle folder, its bundle.json, or a run folder (meaning its final bundle, run/model)."""
    path = Path(path)
    if path.is_file() and path.name == META_FILE:
        path = path.parent
    if (path / META_FILE).is_file():
        return path
    if (path / "model" / META_FILE).is_file():
        return path / "model"
    if not path.exists():
        raise BundleError(f"{path}: no such bundle or run folder")
    raise BundleError(f"{path}: not a model bundle (no {META_FILE}); give a run folder or its model/ folder")


def read_meta(path: str | Path) -> BundleMeta:
    folder = resolve_bundle_path(path)
    try:
        data = json.loads((folder / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{folder / META_FILE}: unreadable bundle metadata ({exc})") from exc
    return _load_detector(folder, BundleMeta.from_dict(data, where=folder))


def _save_detector(folder: Path, meta: BundleMeta) -> BundleMeta:
    """Write the k-NN detector's bank beside the weights (bundle.json holds its checksum)."""
    if meta.calibration.detector is not None:
        meta.calibration.detector.save(folder)
    return meta


def _load_detector(folder: Path, meta: BundleMeta) -> BundleMeta:
    """Attach the k-NN detector's bank the calibration block names (checked against its checksum)."""
    info = meta.calibration.detector_info
    if not info or meta.calibration.detector is not None:
        return meta
    detector = KNNDetector.load(folder, dict(info))  # checked against its checksum
    return dataclasses.replace(meta, calibration=dataclasses.replace(meta.calibration, detector=detector))


def load_bundle(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, BundleMeta]:
    """Rebuild the model from the bundle's JSON and load its weights (strictly).

    Example:
        >>> model, meta = load_bundle("runs/fashion/model")
        >>> meta.classes[:2]
    """
    folder = resolve_bundle_path(path)
    meta = read_meta(folder)
    weights = folder / WEIGHTS_FILE
    try:
        if meta.weights_sha256 is not None and file_sha256(weights) != meta.weights_sha256:
            raise BundleError(
                f"{weights}: weights do not match {META_FILE}'s checksum: the file is damaged; re-export or retrain"
            )
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{weights}: unreadable weights ({exc})") from exc
    try:
        model = build_model(meta.arch)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError, VisiontuneError) as exc:
        reason = " ".join(str(exc).split())  # torch lists each mismatched tensor on its own line: one line here
        raise BundleError(f"{folder}: weights do not fit the architecture in {META_FILE} ({reason})") from exc
    outputs = getattr(model, "num_classes", len(meta.classes))
    if outputs != len(meta.classes):
        raise BundleError(
            f"{folder / META_FILE}: {len(meta.classes)} classes for a model with {outputs} outputs;"
            " the file was edited or mixed up with another bundle's: re-export or retrain"
        )
    return model.to(device).eval(), meta
