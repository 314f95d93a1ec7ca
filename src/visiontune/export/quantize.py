"""int8 ONNX models: onnxruntime static quantisation, calibrated on the run's training images.

Static, not dynamic: dynamic quantisation only converts weights and measures activation ranges
at run time, and onnxruntime applies it to MatMul/Gemm (and slow ConvInteger kernels for convs),
so a conv net like EfficientNet gains little or nothing. Static quantisation measures the
activation ranges once on real images (the training split, never the images it is then scored on)
and writes a QDQ graph with per-channel int8 weights that onnxruntime runs with int8 conv kernels.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from visiontune.bundle import BundleMeta
from visiontune.errors import MissingPackageError, ModelError
from visiontune.export.check import CheckImages, sample_batch
from visiontune.export.onnx import set_metadata

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 16


def quantize_int8(
    float_path: Path, out: Path, meta: BundleMeta, calibration: CheckImages, *, images: int = 256
) -> None:
    """Write the int8 (QDQ, per-channel) version of `float_path` to `out` (not atomically: pass a temporary path).

    Example:
        >>> quantize_int8(Path("model.onnx"), Path("model.int8.onnx"), meta, train_images)  # doctest: +SKIP
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise MissingPackageError("--quantize needs onnx and onnxruntime: pip install 'visiontune[export]'") from exc

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _batches(calibration, meta, images)

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.numpy()}

    with tempfile.TemporaryDirectory(prefix="visiontune-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=False)
            quantize_static(
                str(prepared),
                str(Path(tmp) / "int8.onnx"),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(f"{float_path}: int8 quantisation failed ({exc}); use the float model") from exc
        source = onnx.load(str(float_path), load_external_data=False)
        quantized = onnx.load(str(Path(tmp) / "int8.onnx"))
        props = {p.key: p.value for p in source.metadata_props}
        props["quantization"] = f"int8 static QDQ, per-channel weights, calibrated on {calibration.description}"
        set_metadata(quantized, props)
        onnx.save_model(quantized, str(out))


def _batches(calibration: CheckImages, meta: BundleMeta, images: int) -> Iterator[torch.Tensor]:
    count = min(images, len(calibration.items))
    for start in range(0, count, CALIBRATION_BATCH):
        chunk = CheckImages(calibration.items[start : min(count, start + CALIBRATION_BATCH)], None, "")
        yield sample_batch(chunk, meta, len(chunk.items))
