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

import csv
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from visiontune.bundle import META_FILE, BundleMeta, load_bundle, resolve_bundle_path
from visiontune.config import LoaderConfig, check_choice, check_range
from visiontune.data.datamodule import DataModule, ImageDataset, collate_skipping_none, default_num_workers
from visiontune.data.sources import Sample
from visiontune.data.transforms import denormalize
from visiontune.errors import DatasetError
from visiontune.evaluation import figures, gradcam
from visiontune.evaluation.ood import OOD_LABEL, ood_metrics, ood_samples, ood_score_values
from visiontune.evaluation.selection import SPLIT_CHOICES, Selection, sample_path, select_images
from visiontune.evaluation.summary import evaluation_metrics, sample_losses, unknown_summary
from visiontune.io import atomic_write_json, atomic_write_text, json_safe
from visiontune.system import inference_batch_size

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

    @property
    def report(self) -> Path:
        return self.out_dir / "report.html"


@dataclass
class Scored:
    """Logits of the images that decoded, and which selected samples they belong to."""

    logits: torch.Tensor  # (N, K) float32
    targets: torch.Tensor  # (N,)
    indices: torch.Tensor  # (N,) positions in the dataset


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
    run_dir = find_run_dir(Path(model), bundle_dir)
    device = _device(config.device)
    net, meta = load_bundle(bundle_dir, device=device)
    selection = select_images(
        data, classes=meta.classes, training=meta.training, run_dir=run_dir, split=config.split,
        label_regex=config.label_regex,
    )  # fmt: skip
    out_dir = Path(config.out) if config.out else default_out(Path(model), run_dir)
    datamodule = DataModule(
        selection.data, meta.preprocessing, loader=_loader_config(config, device), max_pixels=selection_pixels(meta)
    )
    dataset = datamodule.dataset(selection.split, train=False)
    if on_total:
        on_total(len(dataset))
    scored = _predict(net, datamodule.eval_dataloader(selection.split), device, progress)
    if len(scored.targets) == 0:
        raise DatasetError(f"{selection.data.root}: none of the {len(dataset)} selected images could be decoded")
    metrics = _metrics(scored, meta, selection, bundle_dir, data)
    calibrated = (scored.logits / metrics["temperature"]).softmax(dim=1)  # the probabilities predict reports
    _write_basics(out_dir, scored, calibrated, metrics, selection.data.samples, meta.classes)
    metrics["top_losses"] = _top_losses(net, dataset, scored, calibrated, meta, out_dir, config.top_losses, device)
    unknown = None
    if ood is not None:
        metrics["ood"], unknown = _ood(net, dataset, scored, meta, ood, config, device, out_dir)
    else:
        (out_dir / "ood_scores.png").unlink(missing_ok=True)  # from an earlier --ood run into the same folder
    metrics = json_safe(metrics)
    atomic_write_json(out_dir / "metrics.json", metrics)
    from visiontune.evaluation.report import write_report

    write_report(out_dir, metrics, run_dir=run_dir, meta=meta, notes=selection.notes)
    paths = [sample_path(selection.data.samples[int(i)]) for i in scored.indices]
    result = EvalResult(out_dir, metrics, scored.logits, scored.targets, paths)
    if unknown is not None:
        result.ood_logits = unknown.logits
        result.ood_paths = [sample_path(ood[int(i)]) for i in unknown.indices]
    return result


def default_out(model: Path, run_dir: Path | None) -> Path:
    """RUN/eval when MODEL names a run folder (the evaluation lives beside the run); ./eval for a bundle."""
    return run_dir / "eval" if run_dir is not None and run_dir == model else Path("eval")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _write_basics(
    out_dir: Path, scored: Scored, probs: torch.Tensor, metrics: dict[str, Any], samples: list[Any], classes: list[str]
) -> None:
    """misclassified.csv, confusion_matrix.png and reliability.png."""
    _write_misclassified(out_dir / "misclassified.csv", scored, probs, samples, classes)
    figures.plot_confusion_matrix(metrics["confusion_matrix"], classes, out_dir / "confusion_matrix.png")
    scaled = probs if metrics["temperature"] != 1.0 else None  # at T = 1 the two curves are one
    figures.plot_reliability(scored.targets, scored.logits.softmax(dim=1), scaled, out_dir / "reliability.png")


def find_run_dir(given: Path, bundle_dir: Path) -> Path | None:
    """The run folder behind a bundle: the folder given, the bundle's parent, or None for a lone bundle."""
    for candidate in (given, bundle_dir.parent):
        if (candidate / "config.yaml").is_file() and (candidate / "model" / META_FILE).is_file():
            return candidate
    return None


def selection_pixels(meta: BundleMeta) -> int:
    """The decompression-bomb limit the run trained with (the default when the bundle doesn't say)."""
    data = (meta.training.get("config") or {}).get("data") or {}
    return int(data.get("max_pixels", 64_000_000))


def _loader_config(config: EvalConfig, device: torch.device) -> LoaderConfig:
    batch = config.batch_size or inference_batch_size(device.type)
    return LoaderConfig(batch_size=batch, num_workers=config.num_workers, persistent_workers=False)


def _predict(
    net: torch.nn.Module, loader: DataLoader, device: torch.device, progress: Callable[[int], None] | None
) -> Scored:
    """Logits in dataset order; files that fail to decode are left out (the loader warns once each)."""
    parts = []
    with torch.inference_mode():
        for batch in loader:
            if batch is None:
                continue
            images, targets, indices = batch
            parts.append((net(images.to(device)).float().cpu(), targets, indices))
            if progress:
                progress(len(targets))
    if not parts:
        empty = torch.empty(0, dtype=torch.long)
        return Scored(torch.empty(0, 0), empty, empty)
    logits, targets, indices = (torch.cat(t) for t in zip(*parts, strict=True))
    order = torch.argsort(indices)
    return Scored(logits[order], targets[order], indices[order])


def _metrics(
    scored: Scored, meta: BundleMeta, selection: Selection, bundle_dir: Path, data: str | Path
) -> dict[str, Any]:
    temperature = float(meta.calibration.get("temperature") or 1.0)
    metrics = {
        "model": str(bundle_dir),
        "data": str(data),
        "split": selection.split,
        "own_data": selection.own_data,
        "selected": len(selection.data.samples),
        "undecodable": len(selection.data.samples) - len(scored.targets),
        **evaluation_metrics(scored.logits, scored.targets, classes=meta.classes, temperature=temperature),
    }
    metrics["calibration_fitted"] = "ece_before" in meta.calibration  # older bundles: T = 1, no threshold
    metrics["unknown"] = unknown_summary(scored.logits, scored.targets, meta.calibration)
    return metrics


def _write_misclassified(
    path: Path, scored: Scored, probs: torch.Tensor, samples: list[Any], classes: list[str]
) -> None:
    """path, actual, predicted, probability (of the prediction): the most confident mistakes first."""
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != scored.targets).nonzero().flatten().tolist()
    wrong.sort(key=lambda row: -float(confidence[row]))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "actual", "predicted", "probability"])
    for row in wrong:
        sample = samples[int(scored.indices[row])]
        writer.writerow(
            [
                sample_path(sample),
                classes[int(scored.targets[row])],
                classes[int(predicted[row])],
                f"{float(confidence[row]):.6f}",
            ]
        )
    atomic_write_text(path, buffer.getvalue())


def _top_losses(
    net: Any, dataset: ImageDataset, scored: Scored, probs: torch.Tensor, meta: BundleMeta,
    out_dir: Path, count: int, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """top_losses.png and gradcam.png for the `count` highest-loss images; their rows for metrics.json."""
    losses = sample_losses(probs, scored.targets)
    rows = losses.argsort(descending=True)[:count].tolist()
    listed = [_loss_row(r, scored, probs, losses, dataset, meta.classes) for r in rows]
    if not listed:
        for stale in ("top_losses.png", "gradcam.png"):
            (out_dir / stale).unlink(missing_ok=True)
        return {"images": [], "gradcam": None}
    images = torch.stack([dataset[int(scored.indices[r])][0] for r in rows])  # (n, 3, H, W), re-decoded
    shown = denormalize(images, meta.preprocessing)
    wrong = [x["predicted"] != x["actual"] for x in listed]
    titles = [
        f"pred: {_short(x['predicted'])} ({x['probability']:.2f})\nactual: {_short(x['actual'])}\nloss {x['loss']:.2f}"
        for x in listed
    ]
    figures.plot_image_grid(shown, titles, out_dir / "top_losses.png", wrong=wrong)
    reason = gradcam.unavailable_reason(net)
    if reason is None:
        heat = gradcam.grad_cam(net, images.to(device), probs[rows].argmax(dim=1))  # explains the predicted class
        cam_titles = [f"looked for: {_short(x['predicted'])}\nactual: {_short(x['actual'])}" for x in listed]
        figures.plot_image_grid(shown, cam_titles, out_dir / "gradcam.png", wrong=wrong, heat=heat)
    else:
        (out_dir / "gradcam.png").unlink(missing_ok=True)  # a stale map from another model must not stay
    return {"images": listed, "gradcam": {"applies": reason is None, "reason": reason, "explains": "predicted class"}}


def _loss_row(
    row: int, scored: Scored, probs: torch.Tensor, losses: torch.Tensor, dataset: ImageDataset, classes: list[str]
) -> dict[str, Any]:
    predicted, actual = int(probs[row].argmax()), int(scored.targets[row])
    return {
        "path": str(Path(str(dataset.paths[int(scored.indices[row])])).absolute()),
        "actual": classes[actual],
        "predicted": classes[predicted],
        "loss": float(losses[row]),
        "probability": float(probs[row, predicted]),
        "probability_actual": float(probs[row, actual]),
    }


def _ood(
    net: Any,
    dataset: ImageDataset,
    scored: Scored,
    meta: BundleMeta,
    samples: list[Sample],
    config: EvalConfig,
    device: torch.device,
    out_dir: Path,
) -> tuple[dict[str, Any], Scored]:
    """Score the --ood folder; AUROC against the evaluation images, shares flagged unknown, ood_scores.png."""
    ood_set = ImageDataset(
        samples, {OOD_LABEL: 0}, dataset.transform, max_pixels=dataset.max_pixels, draft_size=dataset.draft_size
    )
    workers = default_num_workers(gpu=device.type == "cuda") if config.num_workers is None else config.num_workers
    loader = DataLoader(
        ood_set,
        batch_size=_loader_config(config, device).batch_size,
        num_workers=workers,
        collate_fn=collate_skipping_none,
    )
    unknown = _predict(net, loader, device, None)
    if len(unknown.targets) == 0:
        raise DatasetError(f"{config.ood}: none of its {len(samples)} images could be decoded")
    result = {"folder": str(config.ood), **ood_metrics(scored.logits, unknown.logits, meta.calibration)}
    figures.plot_ood_scores(
        ood_score_values(scored.logits, meta.calibration), ood_score_values(unknown.logits, meta.calibration),
        score=result["score"], threshold=result["threshold"], path=out_dir / "ood_scores.png",
    )  # fmt: skip
    return result, unknown


def _short(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
