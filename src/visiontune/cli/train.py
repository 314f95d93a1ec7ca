"""`visiontune train DATA`: options -> RunConfig -> visiontune.training.train, with a live display.

Every option defaults to None so that a value from --config is only overridden by an option
the user actually typed; what neither gives comes from the config dataclasses' defaults.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from visiontune.cli.console import console, err_console, progress_bar
from visiontune.config import RunConfig, load_yaml
from visiontune.training.callbacks import Callback

Opt = typer.Option


def train_command(
    data: Annotated[str | None, typer.Argument(help="Image folder (class or split folders) or a CSV/TSV.")] = None,
    model: Annotated[
        str | None, Opt("--model", "-m", help="Backbone: efficientnet_lite0/1/2, small_cnn, mlp, any timm name.")
    ] = None,
    method: Annotated[
        str | None,
        Opt(help="finetune (pretrained, frozen then unfrozen), scratch, or features (frozen features, classic heads)."),
    ] = None,
    heads: Annotated[
        str | None, Opt(help="--method features: any of logreg,rf,svm,knn,linear,mlp (default: logreg,knn,linear).")
    ] = None,
    views: Annotated[
        int | None, Opt(help="--method features: N views of each training image (N - 1 augmented), for small data.")
    ] = None,
    tta: Annotated[
        bool | None, Opt("--tta/--no-tta", help="--method features: average each image's features with its mirror's.")
    ] = None,
    weights: Annotated[str | None, Opt(help="Local weights file (.safetensors/.pth) for the backbone.")] = None,
    pretrained: Annotated[bool | None, Opt("--pretrained/--random-init", help="Start from pretrained weights.")] = None,
    epochs: Annotated[int | None, Opt(help="Epochs with all layers learning (after the frozen ones).")] = None,
    freeze_epochs: Annotated[int | None, Opt(help="Epochs with the backbone frozen first.")] = None,
    image_size: Annotated[int | None, Opt(help="Input size in pixels (square); default: the backbone's.")] = None,
    resize: Annotated[str | None, Opt("--resize", help="Resize mode: squish, crop or pad.")] = None,
    pool: Annotated[str | None, Opt(help="Global pooling of the feature maps: avg, max or avgmax.")] = None,
    batch_size: Annotated[int | None, Opt(help="Images per batch (per process).")] = None,
    lr: Annotated[str | None, Opt(help="Peak learning rate, or 'auto' to run the range test first.")] = None,
    augment: Annotated[str | None, Opt(help="Augmentation preset: none, light, standard, strong.")] = None,
    rotation: Annotated[float | None, Opt(help="Override the preset's rotation range in degrees.")] = None,
    precision: Annotated[str | None, Opt(help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, fp16.")] = None,
    label_smoothing: Annotated[float | None, Opt(help="Label smoothing for the loss.")] = None,
    optimizer: Annotated[str | None, Opt(help="adamw, sgd or rmsprop.")] = None,
    patience: Annotated[int | None, Opt(help="Stop after this many epochs without improvement.")] = None,
    unfreeze_top: Annotated[int | None, Opt(help="Unfreeze only the top N layer groups (Keras recipe).")] = None,
    bn_stats: Annotated[
        str | None, Opt(help="Fine-tuning keeps BatchNorm statistics 'frozen' (default) or lets them 'adapt'.")
    ] = None,
    lr_ratio: Annotated[
        float | None, Opt(help="Head rate / earliest layers' rate when fine-tuning (discriminative LRs).")
    ] = None,
    weight_decay: Annotated[float | None, Opt(help="Weight decay (not on norms and biases).")] = None,
    balance: Annotated[
        str | None, Opt(help="Imbalanced classes: auto, none, weights (loss weights) or sampler (balanced batches).")
    ] = None,
    monitor: Annotated[
        str | None, Opt(help="Metric choosing the best epoch: auto, accuracy, balanced_accuracy, valid_loss.")
    ] = None,
    mixup: Annotated[float | None, Opt(help="MixUp alpha (0 = off).")] = None,
    cutmix: Annotated[float | None, Opt(help="CutMix alpha (0 = off).")] = None,
    ema: Annotated[float | None, Opt(help="Keep an EMA of the weights with this decay, e.g. 0.999.")] = None,
    accumulate: Annotated[int | None, Opt(help="Gradient accumulation steps.")] = None,
    compile: Annotated[bool | None, Opt("--compile/--no-compile", help="torch.compile the model.")] = None,
    workers: Annotated[int | None, Opt(help="Data-loading worker processes.")] = None,
    sample: Annotated[float | None, Opt(help="Train on a stratified fraction, e.g. 0.1.")] = None,
    valid_pct: Annotated[float | None, Opt(help="Validation share when the data has no valid split.")] = None,
    label_regex: Annotated[str | None, Opt(help=r"Labels from file names, e.g. '^(.+)_\d+\.jpg$'.")] = None,
    group_regex: Annotated[
        str | None, Opt(help="Keep files sharing this regex group on one side of the split.")
    ] = None,
    seed: Annotated[int | None, Opt(help="Seed for split, sampling and training.")] = None,
    config: Annotated[Path | None, Opt("--config", help="YAML config (sections data, model, train).")] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="Run folder (default runs/<date>-<data>-<model>).")] = None,
    resume: Annotated[
        Path | None, Opt("--resume", help="Continue an interrupted run from its last checkpoint.")
    ] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace a run already in the --out folder.")] = False,
    quiet: Annotated[bool, Opt("--quiet", help="No progress display; just the result.")] = False,
    json_log: Annotated[bool, Opt("--json", help="One JSON line per epoch on stdout (for scripts).")] = False,
) -> None:
    """Train a classifier on DATA (transfer learning from a pretrained backbone by default)."""
    from visiontune.training.run import resume_config, train  # torch, timm: loaded only when training

    if resume is not None:
        run_config = resume_config(resume)
    else:
        if data is None and config is None:
            raise typer.BadParameter("give DATA (an image folder or CSV) or --config FILE")
        values = load_yaml(config) if config else {}
        sections = {
            "data": {"source": data, "sample": sample, "valid_pct": valid_pct, "label_regex": label_regex,
                     "group_regex": group_regex, "seed": seed},
            "model": {"name": model, "weights": weights, "pretrained": pretrained, "image_size": image_size,
                      "resize_mode": resize, "pool": pool},
            "train": {"method": method, "epochs": epochs, "freeze_epochs": freeze_epochs, "batch_size": batch_size,
                      "augment": augment, "rotation": rotation, "precision": precision,
                      "label_smoothing": label_smoothing,
                      "optimizer": optimizer, "patience": patience, "unfreeze_top": unfreeze_top, "bn_stats": bn_stats,
                      "lr_ratio": lr_ratio, "weight_decay": weight_decay, "balance": balance, "monitor": monitor,
                      "mixup": mixup, "cutmix": cutmix, "ema": ema,
                      "accumulate": accumulate, "compile": compile, "num_workers": workers, "seed": seed,
                      "heads": heads, "views": views, "tta": tta},
        }  # fmt: skip
        if lr is not None:
            sections["train"]["lr"] = None if lr == "auto" else _float("--lr", lr)
        run_config = RunConfig.from_dict(_merge(values, sections, out))
    if run_config.train.method == "features" and resume is None:
        result = _train_features(run_config, overwrite=overwrite, quiet=quiet, json_lines=json_log)
        _print_result(result, quiet=json_log)
        return
    display = EpochDisplay(quiet=quiet or json_log, json_lines=json_log)
    result = train(run_config, callbacks=[display], resume=resume, overwrite=overwrite)
    display.close()
    _print_result(result, quiet=json_log)


def _train_features(run_config: RunConfig, *, overwrite: bool, quiet: bool, json_lines: bool) -> Any:
    """--method features: a progress bar while images are embedded, then one line (or JSON line) per head."""
    from visiontune.features.run import train_features

    def on_head(result: Any) -> None:
        if json_lines:
            sys.stdout.write(json.dumps(result.row()) + "\n")
            sys.stdout.flush()
        elif not quiet:
            valid = result.valid
            err_console.print(
                f"{result.name:<7} accuracy {valid['accuracy']:.4f}  macro F1 {valid['macro_f1']:.4f}  "
                f"fit {result.fit_s:.1f}s",
                highlight=False,
            )

    with progress_bar("embedding images", quiet=quiet or json_lines) as (advance, set_total):
        return train_features(run_config, overwrite=overwrite, progress=advance, on_total=set_total, on_head=on_head)


def _float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{name} takes a number or 'auto'. Received: {text!r}") from None


def _merge(base: dict[str, Any], overrides: dict[str, dict[str, Any]], out: Path | None) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in overrides.items():
        merged.setdefault(section, {})
        merged[section].update({k: v for k, v in values.items() if v is not None or k == "lr"})
    if out is not None:
        merged["out"] = str(out)
    return merged


class EpochDisplay(Callback):
    """A rich progress bar per epoch and a line per finished epoch; or JSON lines for scripts."""

    def __init__(self, *, quiet: bool, json_lines: bool) -> None:
        self.quiet, self.json_lines = quiet, json_lines
        self.progress: Progress | None = None
        self.task: Any = None
        self.loss = 0.0
        self.started = 0.0
        self.seen = 0

    def before_fit(self, trainer: Any) -> None:
        if not trainer.is_main or self.quiet:
            return
        counts = trainer.raw_model.parameter_summary()
        err_console.print(
            f"[bold]{trainer.raw_model.arch.get('name')}[/]: {counts['total'] / 1e6:.2f} M parameters; "
            f"precision {trainer.precision}, {trainer.accelerator.num_processes} process(es) on {trainer.device}; "
            f"monitor {trainer.monitor}; run folder {trainer.out_dir}"
        )

    def before_phase(self, trainer: Any, phase: str) -> None:
        if not trainer.is_main or self.quiet:
            return
        counts = trainer.raw_model.parameter_summary()
        err_console.print(
            f"phase [bold]{phase}[/]: {counts['trainable'] / 1e6:.2f} M trainable, "
            f"{counts['frozen'] / 1e6:.2f} M frozen parameters"
        )

    def before_epoch(self, trainer: Any) -> None:
        if not trainer.is_main or self.quiet:
            return
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.0f} img/s"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.task = self.progress.add_task(
            "train", total=len(trainer.train_loader), epoch=trainer.epoch + 1, loss=0.0, rate=0.0
        )
        self.progress.start()
        self.loss, self.started, self.seen = 0.0, time.perf_counter(), 0

    def after_batch(self, trainer: Any, loss: float, batch_size: int) -> None:
        if self.progress is None:
            return
        self.loss = loss if self.seen == 0 else 0.9 * self.loss + 0.1 * loss
        self.seen += batch_size
        rate = self.seen / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, advance=1, loss=self.loss, rate=rate)

    def after_epoch(self, trainer: Any, metrics: dict[str, Any]) -> None:
        self.close()
        if not trainer.is_main:
            return
        if self.json_lines:
            sys.stdout.write(json.dumps(metrics) + "\n")
            sys.stdout.flush()
        elif not self.quiet:
            err_console.print(
                f"epoch {metrics['epoch']:>3} {metrics['phase']:<8}  train_loss {metrics['train_loss']:.4f}  "
                f"valid_loss {metrics['valid_loss']:.4f}  accuracy {metrics['accuracy']:.4f}  "
                f"balanced {metrics['balanced_accuracy']:.4f}  lr {metrics['lr']:.2e}  "
                f"{metrics['images_per_s']:.0f} img/s  data wait {metrics['data_wait_pct']:.0f}%  "
                f"{metrics['time_s']:.1f}s",
                highlight=False,
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _print_result(result: Any, *, quiet: bool) -> None:
    if quiet:
        return
    if getattr(result, "heads", None):
        console.print(_heads_table(result))
    table = Table(title="Result", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("valid_accuracy", "valid_balanced_accuracy", "valid_loss", "test_accuracy", "test_balanced_accuracy"):
        if key in result.metrics:
            table.add_row(key, f"{result.metrics[key]:.4f}")
    if getattr(result, "best_head", None):
        table.add_row("head", result.best_head)
    else:
        table.add_row("best epoch", str(result.best_epoch))
    table.add_row("time", f"{result.elapsed_s:.0f} s")
    console.print(table)
    console.print(f"run folder: [bold]{result.run_dir}[/]   model bundle: [bold]{result.bundle_dir}[/]")


def _heads_table(result: Any) -> Table:
    """--method features: each head's validation scores and fit time; the kept one marked."""
    table = Table(title="Heads (validation)", show_header=True)
    for column in ("head", "accuracy", "macro F1", "fit time"):
        table.add_column(column, justify="left" if column == "head" else "right")
    for row in result.heads:
        name = f"[bold]{row['head']}[/] (kept)" if row["best"] else row["head"]
        table.add_row(name, f"{row['valid_accuracy']:.4f}", f"{row['valid_macro_f1']:.4f}", f"{row['fit_s']:.1f} s")
    return table
