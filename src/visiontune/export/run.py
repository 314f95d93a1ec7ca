"""`export_model`: bundle -> ONNX file, checked against PyTorch on real images before it is kept.

The file is written to a temporary path beside the target and only moved into place once
onnxruntime's probabilities match PyTorch's within `tolerance` on the check images, so a wrong
export never replaces a good one. With `quantize="int8"` an int8 twin follows, scored against
the float graph on the same images (size, speed, accuracy, agreement).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from visiontune.bundle import BundleMeta, load_bundle, resolve_bundle_path
from visiontune.config import check_choice, check_range
from visiontune.errors import ConfigError, ModelError
from visiontune.export.check import (
    PARITY_TOLERANCE,
    CheckImages,
    Comparison,
    check_images,
    compare,
    sample_batch,
    split_images,
    throughputs,
)
from visiontune.export.onnx import DEFAULT_OPSET, OPSETS, to_onnx
from visiontune.io import atomic_path
from visiontune.predict import Predictor
from visiontune.predict.onnx_backend import ONNX_FILE, OnnxModel, weights_sha256
from visiontune.system import inference_batch_size

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
QUANTIZE = ("int8",)
SPLITS = ("valid", "test")


@dataclass(frozen=True)
class ExportConfig:
    """What `visiontune export` takes: the format, where to write, and how to check.

    `out` defaults to model.onnx inside the bundle folder, where `--backend onnx` looks for it.
    """

    format: str = "onnx"
    out: str | None = None
    opset: int = DEFAULT_OPSET
    quantize: str | None = None
    data: str | None = None  # the training data's folder now, when it has moved since training
    split: str = "valid"
    calibration_images: int = 256
    tolerance: float = PARITY_TOLERANCE

    def __post_init__(self) -> None:
        check_choice("format", self.format, FORMATS)
        check_choice("quantize", self.quantize, (None, *QUANTIZE))
        check_choice("split", self.split, SPLITS)
        if self.opset not in OPSETS:
            raise ConfigError(f"`opset` must be one of {OPSETS.start}..{OPSETS.stop - 1}. Received: opset={self.opset}")
        check_range("calibration_images", self.calibration_images, 1, 100_000)


@dataclass
class QuantReport:
    """The int8 graph against the float one: file sizes, images/s (batches of `batch`), answers."""

    path: Path
    size_bytes: int
    float_size_bytes: int
    float_speed: float
    int8_speed: float
    batch: int
    calibration: str
    comparison: Comparison  # reference = float ONNX, candidate = int8


@dataclass
class ExportReport:
    """Where the file went, what it was checked on and how it compared with PyTorch."""

    path: Path
    size_bytes: int
    images: str
    parity: Comparison  # reference = PyTorch, candidate = onnxruntime
    tolerance: float
    seconds: float
    quantized: QuantReport | None = None


def export_model(source: str | Path, config: ExportConfig = ExportConfig()) -> ExportReport:
    """Export a bundle (or run) to ONNX, check it on real images, optionally quantise it; see the module docstring.

    Example:
        >>> report = export_model("runs/demo", ExportConfig(quantize="int8"))  # doctest: +SKIP
        >>> report.parity.max_abs_diff, report.quantized.int8_speed  # doctest: +SKIP
    """
    start = time.perf_counter()
    folder = resolve_bundle_path(source)
    model, meta = load_bundle(folder)
    out = Path(config.out) if config.out else folder / ONNX_FILE
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    data = Path(config.data) if config.data else None
    images = check_images(folder, meta, data=data, split=config.split)
    reference = _predictor(model, meta)
    with atomic_path(out) as tmp:  # a folder we may not write to: a one-line OutputError
        to_onnx(model, meta, tmp, opset=config.opset, weights=weights_sha256(folder), where=folder)
        exported = _predictor(OnnxModel(tmp), meta)
        parity = compare(reference, exported, images)
        if parity.max_abs_diff > config.tolerance:
            raise ModelError(
                f"{folder}: the ONNX graph's probabilities differ from PyTorch's by {parity.max_abs_diff:.2e} "
                f"(> {config.tolerance:g}) on {images.description}; nothing was written. Try another --opset"
            )
    report = ExportReport(out, out.stat().st_size, images.description, parity, config.tolerance, 0.0)
    if config.quantize == "int8":
        train = split_images(folder, meta, data=data, split="train", limit=config.calibration_images)
        report.quantized = _quantize(out, meta, exported, images, train or images, config)
    report.seconds = time.perf_counter() - start
    return report


def int8_path(out: Path) -> Path:
    """model.onnx -> model.int8.onnx, beside it."""
    return out.with_name(f"{out.name.removesuffix('.onnx')}.int8.onnx")


def _quantize(
    out: Path, meta: BundleMeta, exported: Predictor, images: CheckImages, train: CheckImages, config: ExportConfig
) -> QuantReport:
    from visiontune.export.quantize import quantize_int8

    target = int8_path(out)
    with atomic_path(target) as tmp:
        quantize_int8(out, tmp, meta, train, images=config.calibration_images)
        quantized = _predictor(OnnxModel(tmp), meta)
        comparison = compare(exported, quantized, images)
    batch_size = inference_batch_size("cpu", meta.preprocessing.image_size)
    batch = sample_batch(images, meta, batch_size)
    float_speed, int8_speed = throughputs([exported.model, quantized.model], batch)
    return QuantReport(
        target,
        target.stat().st_size,
        out.stat().st_size,
        float_speed,
        int8_speed,
        batch_size,
        train.description,
        comparison,
    )


def _predictor(model: object, meta: BundleMeta) -> Predictor:
    return Predictor(model, meta.classes, meta.preprocessing, calibration=meta.calibration, meta=meta, device="cpu")  # type: ignore[arg-type]
