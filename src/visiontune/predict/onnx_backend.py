"""onnxruntime in place of PyTorch for the forward pass: `Predictor.load(..., backend="onnx")`.

`OnnxModel` is an `nn.Module` with no parameters whose forward runs an onnxruntime session, so
the Predictor keeps its one code path (`.eval().to(cpu)`, `requires_grad_`, `model(images)`):
only the matrix maths moves. Everything the Predictor needs besides the graph (classes,
preprocessing, calibration) travels in the ONNX file's metadata, written by `visiontune export`,
so a `.onnx` file alone is enough to predict and serve; onnxruntime reads that metadata itself,
the `onnx` package is not needed here.

A bundle (or run) folder with `backend="onnx"` takes its graph from the bundle's own `model.onnx`
when that was exported from these very weights (and its classes and calibration from bundle.json,
as the torch backend does), and otherwise exports once into the cache folder.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visiontune.bundle import WEIGHTS_FILE, BundleMeta
from visiontune.calibration import Calibration
from visiontune.data.transforms import Preprocessing
from visiontune.detector import KNNDetector
from visiontune.errors import BundleError, MissingPackageError
from visiontune.system import available_cpus

log = logging.getLogger(__name__)

ONNX_FORMAT = "visiontune.onnx/1"
ONNX_FILE = "model.onnx"  # what `visiontune export` writes into the bundle folder by default
INPUT_NAME, OUTPUT_NAME = "images", "logits"
EMBEDDING_NAME = "embeddings"  # the second output of graphs whose bundle has a k-NN detector
DETECTOR_KEY = "detector"  # metadata: base64 of the detector bank's safetensors bytes
# metadata_props keys: plain names, JSON values, readable by any ONNX consumer
META_KEYS = ("classes", "preprocessing", "calibration", "arch", "metrics")


class OnnxModel(nn.Module):
    """(B, 3, H, W) normalised float32 images -> (B, K) float32 logits, computed by onnxruntime on the CPU.

    Example:
        >>> model = OnnxModel("model.onnx")  # doctest: +SKIP
        >>> model(torch.zeros(2, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([2, 10])
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        ort = import_onnxruntime()
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cpus()
        options.inter_op_num_threads = 1  # one request's graph at a time; parallelism is within each op
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for missing and broken files
            raise BundleError(f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.embeds = EMBEDDING_NAME in {output.name for output in self.session.get_outputs()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([OUTPUT_NAME], {self.input_name: _pixels(images)})
        return torch.from_numpy(logits)

    def logits_and_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K + D): the logits, then the pooled embedding the k-NN score reads, from one run of the graph."""
        if not self.embeds:
            raise BundleError(f"{self.path}: the graph has no {EMBEDDING_NAME!r} output; export the model again")
        logits, embedded = self.session.run([OUTPUT_NAME, EMBEDDING_NAME], {self.input_name: _pixels(images)})
        return torch.from_numpy(np.concatenate([logits, embedded], axis=1))

    def extra_repr(self) -> str:
        return str(self.path)


def _pixels(images: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(images.detach().cpu().float().numpy())  # NCHW, whatever the memory format


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingPackageError(
            "the onnx backend needs onnxruntime: pip install 'visiontune[export]' (or use --backend torch)"
        ) from exc
    return onnxruntime


def meta_from_onnx(model: OnnxModel) -> BundleMeta:
    """The bundle metadata `visiontune export` stored in the ONNX file (classes, preprocessing, calibration)."""
    props = model.metadata
    if props.get("visiontune.format") != ONNX_FORMAT:
        raise BundleError(
            f"{model.path}: no visiontune metadata (format {props.get('visiontune.format')!r}); "
            "export the model with `visiontune export`, which stores its classes and preprocessing"
        )
    try:
        values = {key: json.loads(props[key]) for key in META_KEYS}
        calibration = Calibration.from_dict(values["calibration"])
        meta = BundleMeta(
            arch=values["arch"],
            classes=list(values["classes"]),
            preprocessing=Preprocessing.from_dict(values["preprocessing"]),
            metrics=values["metrics"],
            calibration=_with_detector(calibration, props.get(DETECTOR_KEY), where=str(model.path)),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise BundleError(f"{model.path}: incomplete visiontune metadata ({exc}); export the model again") from exc
    return meta


def _with_detector(calibration: Calibration, encoded: str | None, *, where: str) -> Calibration:
    """The calibration with the k-NN detector whose bank the metadata carries (when it does)."""
    if not encoded or not calibration.detector_info:
        return calibration
    bank = KNNDetector.from_bytes(base64.b64decode(encoded), dict(calibration.detector_info), where=where)
    return dataclasses.replace(calibration, detector=bank)


def weights_sha256(bundle: Path) -> str:
    """sha256 of a bundle's weights file: ties an exported graph to the weights it came from."""
    digest = hashlib.sha256()
    with open(bundle / WEIGHTS_FILE, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
