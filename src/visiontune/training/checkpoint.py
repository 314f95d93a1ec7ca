"""Checkpoints as one safetensors file each: weights, optimizer state, RNG states and trainer state.

One file, written to a temporary name and renamed, so a kill at any moment leaves either the old
checkpoint or the new one, never a torn one. Nothing is pickled: tensors go in as tensors, the
rest (optimizer hyperparameters, epoch, callback state) as JSON in the file's metadata.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from visiontune.errors import OutputError, VisiontuneError
from visiontune.io import atomic_path

FORMAT = "visiontune.checkpoint/1"


class CheckpointError(VisiontuneError):
    """A checkpoint can't be written (disk full) or read (missing, corrupt, other version)."""

    exit_code = 7


@dataclass
class Checkpoint:
    """What a training run needs to continue exactly where it stopped."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    ema: dict[str, torch.Tensor] | None = None
    state: dict[str, Any] = field(default_factory=dict)  # epoch, phase, metrics, callbacks, scaler
    rng: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and random states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` atomically; a full disk is a one-line error and the old file stays intact."""
    tensors, meta = _flatten(checkpoint)
    try:
        with atomic_path(path) as tmp:  # safetensors reports ENOSPC as a SafetensorError: atomic_path reads both
            save_file(tensors, str(tmp), metadata=meta)
    except OutputError as exc:
        if exc.disk_full:
            raise CheckpointError(
                f"{path}: disk full while writing a checkpoint (the previous one is intact); free space and resume"
                " the run (visiontune train --resume RUN)"
            ) from exc
        raise CheckpointError(f"can't write a checkpoint: {exc}") from exc


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here; is this a visiontune run folder?")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc}); delete it to restart from scratch") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT!r}")
    return _unflatten(tensors, meta)


def _flatten(ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {f"model.{k}": v for k, v in ckpt.model.items()}
    tensors.update({f"ema.{k}": v for k, v in (ckpt.ema or {}).items()})
    meta: dict[str, Any] = {"format": FORMAT, "state": ckpt.state}
    if ckpt.optimizer is not None:
        state_meta: dict[str, dict[str, Any]] = {}
        for pid, values in ckpt.optimizer["state"].items():
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{pid}.{name}"] = value
                else:
                    state_meta.setdefault(str(pid), {})[name] = value
        meta["optim_groups"] = ckpt.optimizer["param_groups"]
        meta["optim_state"] = state_meta
        meta["optim_ids"] = [str(pid) for pid in ckpt.optimizer["state"]]
    rng = dict(ckpt.rng)
    for key in ("torch", "cuda"):
        if key in rng:
            values = rng.pop(key)
            for i, value in enumerate(values if key == "cuda" else [values]):
                tensors[f"rng.{key}.{i}"] = value
    if "numpy" in rng:
        name, keys, *rest = rng.pop("numpy")
        tensors["rng.numpy"] = keys
        rng["numpy"] = [name, *rest]
    meta["rng"] = rng
    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    return clean, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _unflatten(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Checkpoint:
    def section(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    ckpt = Checkpoint(model=section("model."), ema=section("ema.") or None, state=json.loads(meta["state"]))
    if "optim_groups" in meta:
        ckpt.optimizer = _optimizer_state(section("optim."), meta)
    rng = json.loads(meta.get("rng", "{}"))
    if "rng.torch.0" in tensors:
        rng["torch"] = tensors["rng.torch.0"]
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda:
        rng["cuda"] = [tensors[k] for k in cuda]
    if "rng.numpy" in tensors:
        name, *rest = rng["numpy"]
        rng["numpy"] = (name, tensors["rng.numpy"], *rest)
    ckpt.rng = rng
    return ckpt


def _optimizer_state(flat: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): {} for pid in json.loads(meta["optim_ids"])}
    for key, value in flat.items():
        pid, name = key.split(".", 1)
        state[int(pid)][name] = value
    for pid, values in json.loads(meta["optim_state"]).items():
        state[int(pid)].update(values)
    return {"state": state, "param_groups": json.loads(meta["optim_groups"])}
