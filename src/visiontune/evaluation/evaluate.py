"""`evaluate(model, data)`: score a bundle on labelled images and write the evidence to a folder.

    eval/
      metrics.json          accuracy, top-k, balanced accuracy, per-class report, log loss, ECE
                            before/after temperature, confusions, unknowns (and OOD with --ood)
      confusion_matrix.png  counts and row-normalised
      top_losses.png        the images the model got most wrong, titled predicted / actual / loss
      gradcam.png           where the model looked on those images (when its head has a gradient)
      reliability.png       accuracy against confidence, before and after temperature scaling
      misclassified.csv     path, actual, predicted, probability: open the files the model got wrong
      ood_scores.png        with --ood: the unknown score on known and OOD images
      report.html           all of the above on one self-contained page, plus the run's history

Every file is written atomically; the images come from `selection` (never the training split).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visiontune.bundle import BundleMeta, resolve_bundle_path
from visiontune.config import check_choice, check_range
from visiontune.data.loader import ImageItems
from visiontune.data.sources import Sample
from visiontune.errors import DatasetError
from visiontune.evaluation import figures, gradcam
from visiontune.evaluation.answers import write_answers
from visiontune.evaluation.intervals import accuracy_intervals, set_coverage
from visiontune.evaluation.ood import ood_metrics, ood_samples, ood_score_values
from visiontune.evaluation.report import write_report
from visiontune.evaluation.selection import SPLIT_CHOICES, Selection, sample_path, select_images
from visiontune.evaluation.summary import evaluation_metrics, sample_losses, unknown_summary
from visiontune.io import atomic_write_json, atomic_write_text, json_safe
from visiontune.predict import Predictor
from visiontune.runs.folder import RunFolder, csv_text, find_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """What to score and where to write it. `split` None: the test split (see `selection`)."""

    split: str | None = None
    out: str | None = None
    ood: str | None = None
    top_losses: int = 16
    batch_size: int | None = None
    num_workers: int | None = None
    label_regex: str | None = None
    device: str = "auto"
    corrections: str | None = None  # corrections.csv to apply; None: the one the run used, or DATA's own

    def __post_init__(self) -> None:
        if self.split is not None:
            check_choice("split", self.split, SPLIT_CHOICES)
        check_range("top_losses", self.top_losses, 0, 256)
        if self.batch_size is not None:
            check_range("batch_size", self.batch_size, 1, 100_000)
        check_choice("device", self.device, ("auto", "cpu", "cuda"))


@dataclass
class EvalResult:
    """Where the outputs are, the numbers of metrics.json, and the raw scores behind them."""

    out_dir: Path
    metrics: dict[str, Any]
    logits: torch.Tensor  # (N, K) float32, the raw model's, for the images that decoded
    targets: torch.Tensor  # (N,) class indices
    paths: list[str]  # (N,) their files
    ood_logits: torch.Tensor | None = None  # (M, K) for the --ood images that decoded
    ood_paths: list[str] = field(default_factory=list)
    embeddings: torch.Tensor | None = None  # (N, D), (M, D): when the bundle has the k-NN detector
    ood_embeddings: torch.Tensor | None = None

    @property
    def report(self) -> Path:
        return self.out_dir / "report.html"


@dataclass
class Scored:
    """Logits of the images that decoded, and which selected samples they belong to."""

    logits: torch.Tensor  # (N, K) float32
    targets: torch.Tensor  # (N,)
    indices: torch.Tensor  # (N,) positions in the dataset
    embeddings: torch.Tensor | None = None  # (N, D) when the bundle has the k-NN detector

    @classmethod
    def of(
        cls,
        predictor: Predictor,
        dataset: ImageItems,
        targets: list[int],
        config: EvalConfig,
        progress: Callable[[int], None] | None = None,
    ) -> Scored:
        """Score `dataset` through the predictor's own loader and forward pass: exactly what predict serves."""
        runner = predictor.runner
        loader = runner.loader(dataset, batch_size=config.batch_size, num_workers=config.num_workers)
        forward = predictor.embedding_forward() if predictor.can_embed else None  # one pass for both
        scored = runner.outputs(loader, forward=forward, progress=progress)
        logits, embedded = scored.outputs[:, : predictor.num_classes], None
        if forward is not None:
            embedded = scored.outputs[:, predictor.num_classes :]
        return cls(logits, torch.as_tensor(targets, dtype=torch.long)[scored.indices], scored.indices, embedded)


def evaluate(
    model: str | Path,
    data: str | Path,
    config: EvalConfig | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> EvalResult:
    """Score the bundle at `model` (a bundle or run folder) on `data` and write metrics, figures and report.html.

    Example:
        >>> result = evaluate("runs/demo", "demo")  # the run's own test split
        >>> result.metrics["accuracy"], result.report
    """
    config = config or EvalConfig()
    ood = ood_samples(config.ood) if config.ood else None  # a bad --ood folder fails before any work
    bundle_dir = resolve_bundle_path(model)
    run = find_run(Path(model), bundle_dir)
    predictor = Predictor.load(bundle_dir, device=config.device)
    meta = predictor.meta
    assert meta is not None  # a bundle's predictor carries its metadata
    selection = select_images(
        data, classes=meta.classes, training=meta.training, run=run, split=config.split,
        label_regex=config.label_regex, corrections=config.corrections,
    )  # fmt: skip
    out_dir = Path(config.out) if config.out else default_out(Path(model), run)
    samples = selection.data.samples
    dataset = predictor.dataset([s.path for s in samples], max_pixels=selection_pixels(meta))
    if on_total:
        on_total(len(dataset))
    targets = [selection.data.class_to_idx[s.label] for s in samples]
    scored = Scored.of(predictor, dataset, targets, config, progress)
    if len(scored.targets) == 0:
        raise DatasetError(f"{selection.data.root}: none of the {len(dataset)} selected images could be decoded")
    metrics = _metrics(scored, meta, selection, bundle_dir, data)
    metrics["intervals"] = accuracy_intervals(scored.logits.argmax(dim=1), scored.targets, classes=meta.classes)
    metrics["prediction_sets"] = set_coverage(predictor.calibration, scored.logits, scored.targets, meta.classes)
    calibrated = meta.calibration.probabilities(scored.logits)  # the probabilities predict reports
    _write_basics(out_dir, scored, calibrated, metrics, samples, meta.classes)
    metrics["top_losses"] = _top_losses(predictor, dataset, scored, calibrated, out_dir, config.top_losses)
    unknown = None
    if ood is not None:
        metrics["ood"], unknown = _ood(predictor, scored, ood, config, out_dir)
    else:
        (out_dir / "ood_scores.png").unlink(missing_ok=True)  # from an earlier --ood run into the same folder
    metrics = json_safe(metrics)
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_report(out_dir, metrics, run=run, meta=meta, notes=selection.notes)
    paths = [sample_path(selection.data.samples[int(i)]) for i in scored.indices]
    write_answers(out_dir, paths, scored.targets, scored.logits.argmax(dim=1), meta.classes)
    result = EvalResult(out_dir, metrics, scored.logits, scored.targets, paths, embeddings=scored.embeddings)
    if unknown is not None:
        result.ood_logits, result.ood_embeddings = unknown.logits, unknown.embeddings
        result.ood_paths = [sample_path(ood[int(i)]) for i in unknown.indices]
    return result


def default_out(model: Path, run: RunFolder | None) -> Path:
    """RUN/eval when MODEL names a run folder (the evaluation lives beside the run); ./eval for a bundle."""
    return run.eval_dir if run is not None and run.path == model else Path("eval")


def _write_basics(
    out_dir: Path, scored: Scored, probs: torch.Tensor, metrics: dict[str, Any], samples: list[Any], classes: list[str]
) -> None:
    """misclassified.csv, confusion_matrix.png and reliability.png."""
    _write_misclassified(out_dir / "misclassified.csv", scored, probs, samples, classes)
    figures.plot_confusion_matrix(metrics["confusion_matrix"], classes, out_dir / "confusion_matrix.png")
    scaled = probs if metrics["temperature"] != 1.0 else None  # at T = 1 the two curves are one
    figures.plot_reliability(scored.targets, scored.logits.softmax(dim=1), scaled, out_dir / "reliability.png")


def selection_pixels(meta: BundleMeta) -> int:
    """The decompression-bomb limit the run trained with (the default when the bundle doesn't say)."""
    data = (meta.training.get("config") or {}).get("data") or {}
    return int(data.get("max_pixels", 64_000_000))


def _metrics(
    scored: Scored, meta: BundleMeta, selection: Selection, bundle_dir: Path, data: str | Path
) -> dict[str, Any]:
    temperature = meta.calibration.temperature
    metrics = {
        "model": str(bundle_dir),
        "data": str(data),
        "split": selection.split,
        "own_data": selection.own_data,
        "selected": len(selection.data.samples),
        "undecodable": len(selection.data.samples) - len(scored.targets),
        **evaluation_metrics(scored.logits, scored.targets, classes=meta.classes, temperature=temperature),
    }
    metrics["calibration_fitted"] = meta.calibration.fitted  # older bundles: T = 1, no threshold
    metrics["unknown"] = unknown_summary(scored.logits, scored.targets, meta.calibration, embeddings=scored.embeddings)
    return metrics


def _write_misclassified(
    path: Path, scored: Scored, probs: torch.Tensor, samples: list[Any], classes: list[str]
) -> None:
    """path, actual, predicted, probability (of the prediction): the most confident mistakes first."""
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != scored.targets).nonzero().flatten().tolist()
    wrong.sort(key=lambda row: -float(confidence[row]))
    columns = (scored.indices[wrong], scored.targets[wrong], predicted[wrong], confidence[wrong])
    rows = [
        (sample_path(samples[int(i)]), classes[int(t)], classes[int(p)], f"{float(c):.6f}")
        for i, t, p, c in zip(*columns, strict=True)
    ]
    atomic_write_text(path, csv_text([("path", "actual", "predicted", "probability"), *rows]))


def _top_losses(
    predictor: Predictor, dataset: ImageItems, scored: Scored, probs: torch.Tensor, out_dir: Path, count: int
) -> dict[str, Any]:
    """top_losses.png and gradcam.png for the `count` highest-loss images; their rows for metrics.json."""
    losses = sample_losses(probs, scored.targets)
    rows = losses.argsort(descending=True)[:count].tolist()
    listed = [_loss_row(r, scored, probs, losses, dataset, predictor.classes) for r in rows]
    if not listed:
        for stale in ("top_losses.png", "gradcam.png"):
            (out_dir / stale).unlink(missing_ok=True)
        return {"images": [], "gradcam": None}
    pixels = torch.stack([dataset[int(scored.indices[r])][0] for r in rows])  # (n, H, W, 3) uint8, re-decoded
    shown = pixels.permute(0, 3, 1, 2).float() / 255  # (n, 3, H, W) colours in 0..1
    wrong = [x["predicted"] != x["actual"] for x in listed]
    titles = [
        f"pred: {_short(x['predicted'])} ({x['probability']:.2f})\nactual: {_short(x['actual'])}\nloss {x['loss']:.2f}"
        for x in listed
    ]
    figures.plot_image_grid(shown, titles, out_dir / "top_losses.png", wrong=wrong)
    reason = gradcam.unavailable_reason(predictor.model)
    if reason is None:  # explains the predicted class, on the images as the model sees them
        heat = gradcam.grad_cam(predictor.model, predictor.runner.images(pixels), probs[rows].argmax(dim=1))
        cam_titles = [f"looked for: {_short(x['predicted'])}\nactual: {_short(x['actual'])}" for x in listed]
        figures.plot_image_grid(shown, cam_titles, out_dir / "gradcam.png", wrong=wrong, heat=heat)
    else:
        (out_dir / "gradcam.png").unlink(missing_ok=True)  # a stale map from another model must not stay
    return {"images": listed, "gradcam": {"applies": reason is None, "reason": reason, "explains": "predicted class"}}


def _loss_row(
    row: int, scored: Scored, probs: torch.Tensor, losses: torch.Tensor, dataset: ImageItems, classes: list[str]
) -> dict[str, Any]:
    predicted, actual = int(probs[row].argmax()), int(scored.targets[row])
    return {
        "path": str(Path(str(dataset.path(int(scored.indices[row])))).absolute()),
        "actual": classes[actual],
        "predicted": classes[predicted],
        "loss": float(losses[row]),
        "probability": float(probs[row, predicted]),
        "probability_actual": float(probs[row, actual]),
    }


def _ood(
    predictor: Predictor, scored: Scored, samples: list[Sample], config: EvalConfig, out_dir: Path
) -> tuple[dict[str, Any], Scored]:
    """Score the --ood folder; AUROC against the evaluation images, shares flagged unknown, ood_scores.png."""
    dataset = predictor.dataset([s.path for s in samples], max_pixels=selection_pixels(predictor.meta))
    unknown = Scored.of(predictor, dataset, [0] * len(samples), config)
    if len(unknown.targets) == 0:
        raise DatasetError(f"{config.ood}: none of its {len(samples)} images could be decoded")
    calibration = predictor.calibration
    embedded = (scored.embeddings, unknown.embeddings)
    result = {"folder": str(config.ood), **ood_metrics(scored.logits, unknown.logits, calibration, embedded)}
    figures.plot_ood_scores(
        ood_score_values(scored.logits, calibration, scored.embeddings),
        ood_score_values(unknown.logits, calibration, unknown.embeddings),
        score=result["score"], threshold=result["threshold"], path=out_dir / "ood_scores.png",
    )  # fmt: skip
    return result, unknown


def _short(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
