"""A bundle's model as an ONNX graph: normalised images in, logits out, the rest in the metadata.

The graph is `Classifier.forward` traced by torch.export (`torch.onnx.export(dynamo=True)`, the
exporter PyTorch maintains) with a dynamic batch axis:

    images      (batch, 3, H, W) float32, RGB scaled to 0..1, then (x - mean) / std
    logits      (batch, K) float32;  probabilities = softmax(logits / temperature)
    embeddings  (batch, D) float32, the vectors the "knn" unknown score reads, in the layout its
                detector names (embedding.py; bundles with a k-NN detector; its bank is in the
                metadata, so the file alone scores it)

Resizing stays outside the graph (it depends on each image's size), so the metadata says how:
`preprocessing` (size, mean, std, interpolation, resize mode), `classes`, `calibration`
(temperature and "unknown" thresholds), `arch` and `metrics` as JSON strings, plus the sha256 of
the weights the graph came from. `visiontune.predict.onnx_backend` reads them back.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from visiontune.bundle import BundleMeta, load_bundle, read_meta, resolve_bundle_path
from visiontune.data.fileinfo import default_cache_path
from visiontune.embedding import has_embeddings, logits_and_embeddings
from visiontune.errors import BundleError, ConfigError, MissingPackageError, ModelError
from visiontune.io import atomic_path
from visiontune.predict.onnx_backend import (
    DETECTOR_KEY,
    EMBEDDING_NAME,
    INPUT_NAME,
    ONNX_FILE,
    ONNX_FORMAT,
    OUTPUT_NAME,
    OnnxModel,
    meta_from_onnx,
    weights_sha256,
)
from visiontune.version import __version__

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
OPSETS = range(18, 24)  # what torch.onnx's exporter writes natively (older opsets would need a lossy conversion)


def export_bundle(source: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export the bundle (or run) at `source` to `out` with its metadata; no checks (see `export.check`).

    Example:
        >>> export_bundle("runs/demo", "demo.onnx")  # doctest: +SKIP
        PosixPath('demo.onnx')
    """
    folder = resolve_bundle_path(source)
    model, meta = load_bundle(folder)
    with atomic_path(out) as tmp:
        to_onnx(model, meta, tmp, opset=opset, weights=weights_sha256(folder), where=folder)
    return Path(out)


def to_onnx(
    model: torch.nn.Module,
    meta: BundleMeta,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    weights: str | None = None,
    where: str | Path = "<model>",
) -> None:
    """Write `model` (images -> logits) as ONNX at `path` (not atomically: callers pass a temporary path)."""
    onnx = import_onnx()
    if opset not in OPSETS:
        raise ConfigError(f"`opset` must be one of {OPSETS.start}..{OPSETS.stop - 1}. Received: opset={opset}")
    height, width = meta.preprocessing.image_size
    example = torch.randn(2, 3, height, width)  # 2, not 1: a batch of one would be specialised into the graph
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    embeds = meta.calibration.detector is not None and has_embeddings(model)
    graph = _LogitsAndEmbeddings(model, meta) if embeds else model
    try:
        with _quiet():
            # torch.export first, so a model that can't be traced fails here with its reason, rather than
            # torch.onnx falling back to the TorchScript exporter and a graph with a fixed batch size
            traced = torch.export.export(graph.eval().float(), (example,), dynamic_shapes=({0: batch},), strict=False)
            program = torch.onnx.export(
                traced,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME, EMBEDDING_NAME] if embeds else [OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # torch.export and the ONNX translation raise many unrelated types
        what, hint = _why_not(meta)
        raise ModelError(f"{where}: {what} can't be exported to ONNX ({_first_line(exc)}); {hint}") from exc
    proto = program.model_proto
    if not proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param:
        raise ModelError(f"{where}: the exported graph has a fixed batch size; {_why_not(meta)[1]}")
    set_metadata(proto, metadata(meta, weights=weights))
    onnx.save_model(proto, str(path))


def metadata(meta: BundleMeta, *, weights: str | None = None) -> dict[str, str]:
    """The ONNX metadata_props: JSON values under plain keys, readable without visiontune."""
    props = {
        "visiontune.format": ONNX_FORMAT,
        "visiontune.version": __version__,
        "classes": json.dumps(meta.classes),
        "preprocessing": json.dumps(meta.preprocessing.to_dict()),
        "calibration": json.dumps(meta.calibration.to_dict()),
        "arch": json.dumps(meta.arch),
        "metrics": json.dumps(meta.metrics),
        "input": f"{INPUT_NAME}: (batch, 3, H, W) float32 RGB in 0..1, normalised (x - mean) / std",
        "output": f"{OUTPUT_NAME}: (batch, classes) float32; probabilities = softmax(logits / temperature)",
    }
    if weights:
        props["weights_sha256"] = weights
    if meta.calibration.detector is not None:
        props[DETECTOR_KEY] = base64.b64encode(meta.calibration.detector.to_bytes()).decode("ascii")
        props["output"] += f"; {EMBEDDING_NAME}: (batch, D) float32, scored against the bank in {DETECTOR_KEY!r}"
    return props


class _LogitsAndEmbeddings(torch.nn.Module):
    """The graph with two outputs: the logits and the detector's embedding, from one pass of the backbone."""

    def __init__(self, model: torch.nn.Module, meta: BundleMeta) -> None:
        super().__init__()
        self.model, self.classes = model, len(meta.classes)
        self.layout = meta.calibration.detector.embedding  # type: ignore[union-attr]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = logits_and_embeddings(self.model, self.layout)(images)
        return outputs[:, : self.classes], outputs[:, self.classes :]


def set_metadata(proto: object, props: dict[str, str]) -> None:
    """Replace the model's metadata_props with `props` (keys not in `props` are kept)."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]  # type: ignore[attr-defined]
    del proto.metadata_props[:]  # type: ignore[attr-defined]
    for key, value in [*kept, *props.items()]:
        entry = proto.metadata_props.add()  # type: ignore[attr-defined]
        entry.key, entry.value = key, value
    proto.producer_name = "visiontune"  # type: ignore[attr-defined]
    proto.producer_version = __version__  # type: ignore[attr-defined]


def import_onnx() -> object:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as exc:
        raise MissingPackageError("ONNX export needs onnx and onnxscript: pip install 'visiontune[export]'") from exc
    return onnx


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress lines and warns about internals; the CLI owns the console."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as captured:
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            log.debug("torch.onnx: %s", captured.getvalue())


def _why_not(meta: BundleMeta) -> tuple[str, str]:
    """What could not be exported, and what to do instead."""
    head = (meta.arch.get("fitted_head") or {}).get("kind")
    if head:
        return (
            f"the {head} head (features method)",
            "serve it with --backend torch, or fit a linear head (--heads logreg) to export",
        )
    return f"the {meta.arch.get('backbone', 'model')} model", "serve it with --backend torch, or try another --opset"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def load_onnx(source: str | Path) -> tuple[OnnxModel, BundleMeta, str]:
    """(model, metadata, name) from a .onnx file, or from a bundle / run folder (its graph, exported if need be)."""
    path = Path(source)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise BundleError(f"{path}: no such ONNX file; create it with `visiontune export MODEL --out {path}`")
        model = OnnxModel(path)
        return model, meta_from_onnx(model), str(path)
    folder = resolve_bundle_path(path)
    return _model_for(folder), read_meta(folder), str(folder)  # bundle.json stays the truth (e.g. recalibrated)


def _model_for(folder: Path) -> OnnxModel:
    """The bundle's model.onnx when it holds these weights; else a cached export (made once, then reused)."""
    digest = weights_sha256(folder)
    cached = default_cache_path().parent / "onnx" / f"{digest[:32]}.onnx"
    for graph in (folder / ONNX_FILE, cached):
        if not graph.is_file():
            continue
        try:
            model = OnnxModel(graph)
        except BundleError:  # a broken file is exported again, not fatal
            continue
        if model.metadata.get("weights_sha256") == digest:
            return model
    log.warning("%s has no model.onnx for these weights: exporting one to %s", folder, cached)
    export_bundle(folder, cached)
    return OnnxModel(cached)
