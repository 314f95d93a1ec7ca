"""The model bundle: one folder that predict, evaluate, export and serve load.

    model/
      bundle.json        architecture, classes, preprocessing, calibration, metrics, versions
      model.safetensors  the weights

No pickle anywhere: the architecture is rebuilt from JSON and the weights are plain tensors, so a
bundle loads without the training code, the user's label functions, or trust in the file (the
class of failure fastai's pickled learners have).
"""

from __future__ import annotations

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
from visiontune.errors import BundleError, VisiontuneError
from visiontune.models import build_model
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

    def to_dict(self) -> dict[str, Any]:
        return {
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

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: Path) -> BundleMeta:
        if data.get("format") != FORMAT:
            raise BundleError(f"{where}: bundle format {data.get('format')!r} is not {FORMAT!r}; re-export it")
        try:
            return cls(
                arch=data["arch"],
                classes=list(data["classes"]),
                preprocessing=Preprocessing.from_dict(data["preprocessing"]),
                metrics=data.get("metrics", {}),
                calibration=Calibration.from_dict(data.get("calibration")),
                training=data.get("training", {}),
                versions=data.get("versions", {}),
                created=data.get("created", ""),
            )
        except (KeyError, TypeError, VisiontuneError) as exc:
            raise BundleError(f"{where}: incomplete bundle metadata ({exc})") from exc


def save_bundle(path: str | Path, model: torch.nn.Module, meta: BundleMeta) -> Path:
    """Write the bundle folder atomically: a half-written bundle never replaces a good one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT})
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
    return BundleMeta.from_dict(data, where=folder)


def load_bundle(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, BundleMeta]:
    """Rebuild the model from the bundle's JSON and load its weights (strictly).

    Example:
        >>> model, meta = load_bundle("runs/fashion/model")
        >>> meta.classes[:2]
    """
    folder = resolve_bundle_path(path)
    meta = read_meta(folder)
    try:
        state = load_file(str(folder / WEIGHTS_FILE), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{folder / WEIGHTS_FILE}: unreadable weights ({exc})") from exc
    model = build_model(meta.arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{folder}: weights do not fit the architecture in {META_FILE} ({exc})") from exc
    return model.to(device).eval(), meta
