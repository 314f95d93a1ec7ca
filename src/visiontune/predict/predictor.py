"""`Predictor`: a bundle (or a pretrained backbone) that answers "what is in this picture?".

Images in (paths, PIL images, numpy arrays or tensors, any mix), one `Prediction` out per input:
the top-k classes with temperature-scaled probabilities, whether the model should admit it
doesn't know, and, for an input that can't be read, an error instead of an exception, so one bad
file never stops a folder of good ones.

The path from file to logits is the one training evaluated with (the bundle's `Preprocessing`,
`pixel_transform` + `normalize_batch`), in small channels-last batches on a CPU and autocast
batches on a GPU; bench/predict_throughput.py compares it with a plain timm loop.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from visiontune.bundle import BundleMeta, load_bundle, resolve_bundle_path
from visiontune.config import check_choice
from visiontune.data.images import DEFAULT_MAX_PIXELS, from_array, open_image, to_rgb
from visiontune.data.transforms import Preprocessing, normalize_batch, pixel_transform
from visiontune.errors import BundleError, ConfigError, ImageError, ModelError
from visiontune.evaluation.calibration import uncalibrated, unknown_scores, unknown_threshold
from visiontune.system import available_cpus, inference_batch_size

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor
TTA_ZOOM = 0.875  # the crop views keep this fraction of each side
BACKENDS = ("torch", "onnx")


@dataclass
class Prediction:
    """One input's answer: `predictions` best first (the best guess even when `unknown`), or an `error`."""

    path: str | None
    predictions: list[dict[str, Any]]  # {"label": str, "probability": float}
    unknown: bool = False
    error: str | None = None
    score: float | None = None  # the unknown score (max probability for "msp"), for the curious

    @property
    def label(self) -> str | None:
        """The top class, or None for an input that failed."""
        return self.predictions[0]["label"] if self.predictions else None

    @property
    def probability(self) -> float | None:
        return self.predictions[0]["probability"] if self.predictions else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object predict --format json and the HTTP service return for one input."""
        return {"path": self.path, "predictions": self.predictions, "unknown": self.unknown, "error": self.error}


class Predictor:
    """Predictions from a trained bundle or a pretrained ImageNet backbone.

    Example:
        >>> predictor = visiontune.load("runs/demo")  # doctest: +SKIP
        >>> [p.label for p in predictor.predict(["shoe.png", Image.open("shirt.jpg")])]  # doctest: +SKIP
        ['sneaker', 'shirt']
    """

    def __init__(
        self,
        model: torch.nn.Module,
        classes: Sequence[str],
        preprocessing: Preprocessing,
        *,
        calibration: dict[str, Any] | None = None,
        meta: BundleMeta | None = None,
        device: str | torch.device = "auto",
        name: str = "",
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.model.requires_grad_(False)
        self.classes = list(classes)
        self.preprocessing = preprocessing
        self.calibration = calibration if calibration is not None else uncalibrated()
        self.temperature = float(self.calibration.get("temperature") or 1.0)
        self.meta = meta
        self.name = name
        self._pixels = pixel_transform(preprocessing)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path, *, device: str | torch.device = "auto", backend: str = "torch") -> Predictor:
        """A bundle folder, a run folder (its final bundle), or a backbone name (its ImageNet classifier).

        `backend="onnx"` runs the forward pass in onnxruntime on the CPU, from a `.onnx` file that
        `visiontune export` wrote or from a bundle (its model.onnx, exported on first use if missing).
        """
        check_choice("backend", backend, BACKENDS)
        path = Path(source)
        if backend == "onnx" or path.suffix.lower() == ".onnx":
            return cls._onnx(path, device)
        if path.exists() or any(sep in str(source) for sep in ("/", "\\")):
            folder = resolve_bundle_path(path)
            model, meta = load_bundle(folder)
            return cls(
                model,
                meta.classes,
                meta.preprocessing,
                calibration=meta.calibration,
                meta=meta,
                device=device,
                name=str(folder),
            )
        return cls.pretrained(str(source), device=device)

    @classmethod
    def _onnx(cls, path: Path, device: str | torch.device) -> Predictor:
        from visiontune.predict.onnx_backend import load_onnx

        if str(device) not in ("auto", "cpu"):
            raise ConfigError(f"the onnx backend runs on the CPU: use --device cpu or --backend torch (not {device})")
        model, meta, name = load_onnx(path)
        return cls(
            model, meta.classes, meta.preprocessing, calibration=meta.calibration, meta=meta, device="cpu", name=name
        )

    @classmethod
    def pretrained(cls, name: str, *, device: str | torch.device = "auto") -> Predictor:
        """A backbone's own 1,000-class ImageNet classifier (no unknown threshold: it was never calibrated)."""
        from visiontune.models.imagenet import imagenet_classes, imagenet_model

        try:
            model, preprocessing = imagenet_model(name)
        except ModelError as exc:
            raise BundleError(f"{name}: not a bundle or run folder, and {exc}") from exc
        return cls(model, imagenet_classes(), preprocessing, device=device, name=name)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # ---- predicting ----------------------------------------------------------------------------
    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        topk: int = 5,
        tta: bool = False,
        unknown: bool = True,
        unknown_score: str | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """One Prediction per input, in order; unreadable inputs get `error` set instead of raising.

        `tta` averages the probabilities of the image, its mirror, a centre zoom and the zoom's
        mirror. `unknown` flags inputs whose confidence is below the bundle's calibrated threshold
        (`unknown_score` "msp" (default) or "energy"); `on_batch(n)` reports progress.
        """
        if topk < 1:
            raise ConfigError(f"`topk` must be at least 1. Received: topk={topk}")
        items = _as_list(images)
        score_name, threshold = unknown_threshold(self.calibration, unknown_score)
        threshold = threshold if unknown else None  # no threshold: never "unknown"
        results: list[Prediction | None] = [None] * len(items)
        for batch, positions, failures in self._batches(items, batch_size, num_workers, max_pixels):
            for position, reason in failures:
                results[position] = Prediction(_path_of(items[position]), [], error=reason)
            if batch is None:
                continue
            paths = [_path_of(items[position]) for position in positions]
            ranked = self._rank(batch, paths, tta=tta, topk=topk, score_name=score_name, threshold=threshold)
            for position, prediction in zip(positions, ranked, strict=True):
                results[position] = prediction
            if on_batch:
                on_batch(len(positions) + len(failures))
        return [r for r in results if r is not None]

    def predict_pixels(
        self, pixels: torch.Tensor, *, topk: int = 5, unknown: bool = True, unknown_score: str | None = None
    ) -> list[Prediction]:
        """Predictions for a (B, H, W, 3) uint8 batch already at model size, in one forward pass.

        For callers that decode and resize themselves, e.g. the HTTP service's dynamic batches
        (`pixel_transform(predictor.preprocessing)` makes such pixels from an RGB image).
        """
        if topk < 1:
            raise ConfigError(f"`topk` must be at least 1. Received: topk={topk}")
        score_name, threshold = unknown_threshold(self.calibration, unknown_score)
        threshold = threshold if unknown else None
        return self._rank(pixels, [None] * len(pixels), topk=topk, score_name=score_name, threshold=threshold)

    def _rank(
        self,
        pixels: torch.Tensor,
        paths: list[str | None],
        *,
        topk: int,
        score_name: str,
        threshold: float | None,
        tta: bool = False,
    ) -> list[Prediction]:
        """One forward pass: calibrated top-k per row, flagged unknown below `threshold` (never when None)."""
        logits, probs = self._calibrated(pixels, tta=tta)
        scores = _scores(logits, probs, self.temperature, score_name)
        top_p, top_i = probs.topk(min(topk, self.num_classes), dim=1)
        results = []
        for row, path in enumerate(paths):
            ranked = [
                {"label": self.classes[i], "probability": round(float(p), 6)}
                for p, i in zip(top_p[row].tolist(), top_i[row].tolist(), strict=True)
            ]
            flagged = threshold is not None and float(scores[row]) < threshold
            results.append(Prediction(path, ranked, flagged, None, float(scores[row])))
        return results

    def predict_proba(self, images: ImageInput | Iterable[ImageInput], *, tta: bool = False) -> np.ndarray:
        """(N, K) calibrated class probabilities; raises ImageError on the first input that can't be read."""
        items = _as_list(images)
        out = np.zeros((len(items), self.num_classes), dtype=np.float32)
        for batch, positions, failures in self._batches(items, None, None, DEFAULT_MAX_PIXELS):
            if failures:
                position, reason = failures[0]
                raise ImageError(_path_of(items[position]) or f"input {position}", reason)
            if batch is not None:
                out[positions] = self._calibrated(batch, tta=tta)[1].numpy()
        return out

    def _calibrated(self, pixels: torch.Tensor, *, tta: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, temperature-scaled probabilities) per input; with `tta` both averaged over the four views."""
        logits = self.logits(pixels, tta=tta)
        probs = (logits / self.temperature).softmax(dim=1)
        if tta:
            probs = probs.view(4, -1, probs.shape[1]).mean(0)
            logits = logits.view(4, -1, logits.shape[1]).mean(0)
        return logits, probs

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
        """Float32 logits on the CPU for a (B, H, W, 3) uint8 batch at model size (4B rows with `tta`)."""
        images = normalize_batch(pixels.to(self.device, non_blocking=True), self.preprocessing)
        if tta:
            images = torch.cat(tta_views(images))
        with self._autocast():
            return self.model(images.contiguous(memory_format=torch.channels_last)).float().cpu()

    def _autocast(self) -> Any:
        if self.device.type != "cuda":
            return nullcontext()  # fp32 on a CPU: autocast there is slower for these models
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _batches(
        self, items: list[ImageInput], batch_size: int | None, num_workers: int | None, max_pixels: int
    ) -> Iterable[tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]]:
        size = batch_size or inference_batch_size(self.device.type)
        dataset = _Inputs(items, self._pixels, max_pixels, self.preprocessing.image_size)
        all_files = all(isinstance(i, str | Path) for i in items)
        workers = _workers(num_workers, all_files, len(items), size, self.device)
        loader = DataLoader(
            dataset,
            batch_size=size,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )
        yield from loader


def load(source: str | Path, *, device: str | torch.device = "auto", backend: str = "torch") -> Predictor:
    """`Predictor.load`: a bundle, a run folder, a backbone name or an exported .onnx file, ready to predict."""
    return Predictor.load(source, device=device, backend=backend)


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible; use --device cpu or auto")
    return resolved


def tta_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The image, its mirror, a centre zoom (TTA_ZOOM of each side, resized back) and the zoom's mirror."""
    height, width = images.shape[-2:]
    crop = TF.center_crop(images, [max(1, round(height * TTA_ZOOM)), max(1, round(width * TTA_ZOOM))])
    zoom = F.interpolate(crop, size=(height, width), mode="bilinear", antialias=False, align_corners=False)
    return [images, images.flip(-1), zoom, zoom.flip(-1)]


# ---- inputs -------------------------------------------------------------------------------------


def _as_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    if isinstance(images, str | Path | Image.Image | np.ndarray):
        return [images]
    if isinstance(images, torch.Tensor):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def _path_of(item: ImageInput) -> str | None:
    return str(item) if isinstance(item, str | Path) else None


class _Inputs(Dataset):
    """(uint8 (H, W, 3) pixels, position) per input, or (None, position, reason) when it can't be read."""

    def __init__(
        self, items: list[ImageInput], pixels: Callable[[Any], torch.Tensor], max_pixels: int, size: tuple[int, int]
    ) -> None:
        self.items, self.pixels, self.max_pixels = items, pixels, max_pixels
        self.draft = (2 * size[1], 2 * size[0])  # JPEGs decode at a reduced scale still twice the model size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:
            return self.pixels(self._image(self.items[index])), index, None
        except ImageError as exc:
            return None, index, exc.reason
        except OSError as exc:
            return None, index, exc.strerror or str(exc)

    def _image(self, item: ImageInput) -> Image.Image:
        if isinstance(item, str | Path):
            path = Path(item)
            if not path.exists():
                raise ImageError(path, "no such file")
            if path.is_dir():
                raise ImageError(path, "is a folder; give image files, or the folder to predict on each image in it")
            data = path.read_bytes()
            return open_image(io.BytesIO(data), max_pixels=self.max_pixels, draft_size=self.draft)
        if isinstance(item, Image.Image):
            return to_rgb(item)
        if isinstance(item, np.ndarray):
            return from_array(item)
        if isinstance(item, torch.Tensor):
            return _tensor_image(item)
        raise ImageError("<input>", f"can't read a {type(item).__name__}; give a path, PIL image, array or tensor")


def _tensor_image(tensor: torch.Tensor) -> Image.Image:
    """A (3, H, W) or (1, H, W) tensor (uint8 0..255 or float 0..1, torchvision's layout) or an (H, W) one."""
    tensor = tensor.detach().cpu()
    if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
        tensor = tensor.permute(1, 2, 0)
    return from_array(tensor.numpy())


def _collate(
    batch: list[tuple[torch.Tensor | None, int, str | None]],
) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    ok = [(pixels, index) for pixels, index, _ in batch if pixels is not None]
    failed = [(index, reason or "can't be read") for pixels, index, reason in batch if pixels is None]
    if not ok:
        return None, [], failed
    return torch.stack([p for p, _ in ok]), [i for _, i in ok], failed


def _workers(requested: int | None, all_files: bool, count: int, batch: int, device: torch.device) -> int:
    """Decoding processes: none for in-memory inputs or a few files; on a GPU machine, most of the cores.

    On a CPU the forward pass already uses every core; a decoding process took cycles from it
    rather than filling idle ones (measured for feature extraction, the same loop).
    """
    if requested is not None:
        return requested if all_files else 0
    if not all_files or count < 4 * batch:
        return 0
    cpus = available_cpus()
    return min(8, cpus - 1) if device.type == "cuda" else (0 if cpus <= 4 else min(8, cpus // 4))


def _scores(logits: torch.Tensor, probs: torch.Tensor, temperature: float, score: str) -> torch.Tensor:
    """The unknown score per input, MSP from the (view-averaged) probabilities; `unknown_threshold` checked `score`."""
    if score == "msp":
        return probs.max(dim=1).values
    return unknown_scores(logits, temperature=temperature, score=score)
