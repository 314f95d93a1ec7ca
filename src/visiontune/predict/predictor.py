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

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from visiontune.bundle import BundleMeta, load_bundle, resolve_bundle_path
from visiontune.calibration import FEATURE_SCORES, Calibration
from visiontune.config import check_choice
from visiontune.conformal import check_coverage
from visiontune.data.images import DEFAULT_MAX_PIXELS
from visiontune.data.loader import Batch, ImageInput, ImageItems
from visiontune.data.transforms import Preprocessing, pixel_transform
from visiontune.embedding import POOLED, has_embeddings, logits_and_embeddings
from visiontune.errors import BundleError, ConfigError, ImageError, ModelError
from visiontune.inference import Inference

log = logging.getLogger(__name__)

TTA_ZOOM = 0.875  # the crop views keep this fraction of each side
NOT_FINITE = "the model's output is not a number (NaN or infinity) for this input; the weights may be damaged"
BACKENDS = ("torch", "onnx")


@dataclass
class Prediction:
    """One input's answer: `predictions` best first (the best guess even when `unknown`), or an `error`."""

    path: str | None
    predictions: list[dict[str, Any]]  # {"label": str, "probability": float}
    unknown: bool = False
    error: str | None = None
    score: float | None = None  # the unknown score (max probability for "msp"), for the curious
    prediction_set: list[str] | None = None  # conformal set, most probable first (None: the bundle has none)
    score_name: str | None = None  # which unknown score `score` is
    threshold: float | None = None  # below it: unknown

    @property
    def label(self) -> str | None:
        """The top class, or None for an input that failed."""
        return self.predictions[0]["label"] if self.predictions else None

    @property
    def probability(self) -> float | None:
        return self.predictions[0]["probability"] if self.predictions else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object predict --format json and the HTTP service return for one input."""
        return {
            "path": self.path,
            "predictions": self.predictions,
            "prediction_set": self.prediction_set,
            "unknown": self.unknown,
            "unknown_score": None if self.error else {
                "name": self.score_name, "value": self.score, "threshold": self.threshold},
            "error": self.error,
        }  # fmt: skip


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
        calibration: Calibration | None = None,
        meta: BundleMeta | None = None,
        device: str | torch.device = "auto",
        name: str = "",
    ) -> None:
        self.runner = Inference.create(model.requires_grad_(False), preprocessing, device=device)
        self.model, self.device = self.runner.model, self.runner.device
        self.classes = list(classes)
        self.preprocessing = preprocessing
        self.calibration = calibration if calibration is not None else Calibration()
        self.meta = meta
        self.name = name

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
        from visiontune.export.onnx import load_onnx  # a bundle without model.onnx is exported first

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
        coverage: float | None = None,
    ) -> list[Prediction]:
        """One Prediction per input, in order; unreadable inputs get `error` set instead of raising.

        `tta` averages the probabilities of the image, its mirror, a centre zoom and the zoom's
        mirror. `unknown` flags inputs whose score is below the bundle's calibrated threshold
        (`unknown_score` "knn", "msp" or "energy"; the bundle's own by default); `coverage` is the
        conformal sets' (the bundle's, 0.9, by default); `on_batch(n)` reports progress.
        """
        score, coverage = self._checked(topk, unknown_score, coverage)  # bad settings fail before any work
        items = _as_list(images)
        results: list[Prediction | None] = [None] * len(items)
        for batch in self._batches(items, batch_size, num_workers, max_pixels):
            for position, reason in batch.failures:
                results[position] = Prediction(_path_of(items[position]), [], error=reason)
            if batch.pixels is not None:
                positions = batch.indices.tolist()
                paths = [_path_of(items[position]) for position in positions]
                ranked = self._rank(
                    batch.pixels, paths, tta=tta, topk=topk, score=score, unknown=unknown, coverage=coverage
                )
                for position, prediction in zip(positions, ranked, strict=True):
                    results[position] = prediction
            if on_batch:
                on_batch(len(batch) + len(batch.failures))
        return [r for r in results if r is not None]

    def predict_pixels(
        self,
        pixels: torch.Tensor,
        *,
        topk: int = 5,
        unknown: bool = True,
        unknown_score: str | None = None,
        coverage: float | None = None,
        tta: bool = False,
        paths: Sequence[str | None] | None = None,
    ) -> list[Prediction]:
        """Predictions for a (B, H, W, 3) uint8 batch already at model size, in one forward pass.

        For callers that decode and resize themselves, e.g. the HTTP service's dynamic batches or
        the Ray workers of `predict.distributed` (`model_inputs` makes such pixels from files);
        `paths` names the rows.
        """
        score, coverage = self._checked(topk, unknown_score, coverage)
        names = list(paths) if paths is not None else [None] * len(pixels)
        return self._rank(pixels, names, topk=topk, score=score, unknown=unknown, tta=tta, coverage=coverage)

    def _checked(self, topk: int, unknown_score: str | None, coverage: float | None) -> tuple[str, float | None]:
        """The score to use and the checked coverage; ConfigError for a bad top-k, score name or coverage."""
        if topk < 1:
            raise ConfigError(f"`topk` must be at least 1. Received: topk={topk}")
        return self.resolve_score(unknown_score), None if coverage is None else check_coverage(coverage)

    def resolve_score(self, requested: str | None = None) -> str:
        """The unknown score to use: `requested`, else the bundle's; "knn" falls back to "msp" only when not asked for.

        The k-NN score needs the detector's bank and the image's embedding: an ONNX graph without
        its embedding output, or a bundle from before the detector, can't give it.
        """
        name = requested or self.calibration.score
        self.calibration.threshold(name)  # a bad name: ConfigError
        if name in FEATURE_SCORES and not self.can_embed:
            if requested:
                raise ConfigError(self.calibration.feature_score_missing(name))
            log.info("%s; using msp", self.calibration.feature_score_missing(name))
            return "msp"
        return name

    def embedding_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward giving (B, K + D) logits and the embedding the detector's bank holds (its layout)."""
        detector = self.calibration.detector
        return logits_and_embeddings(self.model, detector.embedding if detector is not None else POOLED)

    @property
    def can_embed(self) -> bool:
        """Whether this model gives embeddings and a detector is loaded (the "knn" score works)."""
        return self.calibration.detector is not None and has_embeddings(self.model)

    def _rank(
        self,
        pixels: torch.Tensor,
        paths: list[str | None],
        *,
        topk: int,
        score: str,
        unknown: bool,
        tta: bool = False,
        coverage: float | None = None,
    ) -> list[Prediction]:
        """One forward pass: calibrated top-k and conformal set per row; unknown below the threshold of `score`."""
        embedded = None
        if score in FEATURE_SCORES:
            logits, probs, embedded = self._calibrated_embedded(pixels, tta=tta)
        else:
            logits, probs = self._calibrated(pixels, tta=tta)
        # MSP from the (view-averaged) probabilities; other scores from the (averaged) logits or embeddings
        if score == "msp":
            scores = probs.max(dim=1).values
        else:
            scores = self.calibration.scores(logits, score, embeddings=embedded)
        flags = self.calibration.flag(scores, score) if unknown else torch.zeros(len(scores), dtype=torch.bool)
        threshold = self.calibration.threshold(score)
        sets = self.calibration.prediction_sets(probs, coverage=coverage)  # None: no conformal data
        top_p, top_i = probs.topk(min(topk, self.num_classes), dim=1)
        finite = torch.isfinite(probs).all(dim=1) & torch.isfinite(scores)  # (B,)
        results = []
        for row, path in enumerate(paths):
            if not finite[row]:  # NaN in, NaN out: never a "probability" of NaN (invalid JSON), always an error
                results.append(Prediction(path, [], error=NOT_FINITE))
                continue
            ranked = [
                {"label": self.classes[i], "probability": round(float(p), 6)}
                for p, i in zip(top_p[row].tolist(), top_i[row].tolist(), strict=True)
            ]
            labels = None if sets is None else self._set_labels(sets[row], probs[row])
            results.append(
                Prediction(path, ranked, bool(flags[row]), None, float(scores[row]), labels, score, threshold)
            )
        return results

    def _set_labels(self, members: torch.Tensor, probs: torch.Tensor) -> list[str]:
        """The labels of one conformal set, most probable first."""
        chosen = members.nonzero().flatten().tolist()
        return [self.classes[i] for i in sorted(chosen, key=lambda i: -float(probs[i]))]

    def predict_proba(self, images: ImageInput | Iterable[ImageInput], *, tta: bool = False) -> np.ndarray:
        """(N, K) calibrated class probabilities; raises ImageError on the first input that can't be read."""
        items = _as_list(images)
        out = np.zeros((len(items), self.num_classes), dtype=np.float32)
        for batch in self._batches(items, None, None, DEFAULT_MAX_PIXELS):
            if batch.failures:
                position, reason = batch.failures[0]
                raise ImageError(_path_of(items[position]) or f"input {position}", reason)
            if batch.pixels is not None:
                probs = self._calibrated(batch.pixels, tta=tta)[1]
                bad = (~torch.isfinite(probs).all(dim=1)).nonzero().flatten().tolist()
                if bad:
                    position = int(batch.indices[bad[0]])
                    raise ModelError(f"{_path_of(items[position]) or f'input {position}'}: {NOT_FINITE}")
                out[batch.indices.numpy()] = probs.numpy()
        return out

    def _calibrated(self, pixels: torch.Tensor, *, tta: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, temperature-scaled probabilities) per input; with `tta` both averaged over the four views."""
        logits = self.logits(pixels, tta=tta)
        probs = self.calibration.probabilities(logits)
        if tta:
            probs = probs.view(4, -1, probs.shape[1]).mean(0)
            logits = logits.view(4, -1, logits.shape[1]).mean(0)
        return logits, probs

    def _calibrated_embedded(
        self, pixels: torch.Tensor, *, tta: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, probabilities, embeddings) from one forward pass; with `tta` each averaged over the views."""
        forward = self.embedding_forward()
        if tta:
            outputs = self.runner(pixels, forward=lambda images: forward(torch.cat(tta_views(images))))
            outputs = outputs.view(4, -1, outputs.shape[1])
        else:
            outputs = self.runner(pixels, forward=forward).unsqueeze(0)
        logits, embedded = outputs[..., : self.num_classes], outputs[..., self.num_classes :]
        probs = self.calibration.probabilities(logits.flatten(0, 1)).view(logits.shape).mean(0)
        return logits.mean(0), probs, embedded.mean(0)

    def logits(self, pixels: torch.Tensor, *, tta: bool = False) -> torch.Tensor:
        """Float32 logits on the CPU for a (B, H, W, 3) uint8 batch at model size (4B rows with `tta`)."""
        if not tta:
            return self.runner(pixels)
        return self.runner(pixels, forward=lambda images: self.model(torch.cat(tta_views(images))))

    def dataset(self, items: Sequence[ImageInput], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageItems:
        """`items` as the model's inputs: decoded, resized and cropped as the bundle's preprocessing says."""
        return model_inputs(items, self.preprocessing, max_pixels=max_pixels)

    def _batches(
        self, items: list[ImageInput], batch_size: int | None, num_workers: int | None, max_pixels: int
    ) -> Iterable[Batch]:
        yield from self.runner.loader(
            self.dataset(items, max_pixels=max_pixels), batch_size=batch_size, num_workers=num_workers
        )


def load(source: str | Path, *, device: str | torch.device = "auto", backend: str = "torch") -> Predictor:
    """`Predictor.load`: a bundle, a run folder, a backbone name or an exported .onnx file, ready to predict."""
    return Predictor.load(source, device=device, backend=backend)


def model_inputs(
    items: Sequence[ImageInput],
    preprocessing: Preprocessing,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    digest: bool = False,
    dataset: type[ImageItems] = ImageItems,
) -> ImageItems:
    """`items` decoded, resized and cropped as `preprocessing` says: uint8 pixels at model size.

    Without the model, so that decoding can run elsewhere (Ray's CPU tasks); `digest` adds each
    file's sha256 (the feature cache's key); `dataset` may be an ImageItems that reads other places.
    """
    height, width = preprocessing.image_size
    # JPEGs decode at a reduced scale still twice the model size
    return dataset(
        items, pixel_transform(preprocessing), max_pixels=max_pixels, draft_size=(2 * width, 2 * height), digest=digest
    )


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
