"""`visiontune train DATA`: options (`run_options`) -> RunConfig -> `training.pipeline.train`, with a live display."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from visiontune.cli.console import console, err_console, progress_bar, says_stopped
from visiontune.cli.run_options import sections, with_run_options
from visiontune.config import RunConfig, load_yaml, merge_overrides
from visiontune.training.events import Callback

Opt = typer.Option


def train_command(
    data: Annotated[str | None, typer.Argument(help="Image folder (class or split folders) or a CSV/TSV.")] = None,
    lr: Annotated[str | None, Opt(help="Peak learning rate, or 'auto' to run the range test first.")] = None,
    config: Annotated[Path | None, Opt("--config", help="YAML config (sections data, model, train, ...).")] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="Run folder (default runs/<date>-<data>-<backbone>).")] = None,
    resume: Annotated[
        Path | None, Opt("--resume", help="Continue an interrupted run from its last checkpoint.")
    ] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace a run already in the --out folder.")] = False,
    quiet: Annotated[bool, Opt("--quiet", help="No progress display; just the result.")] = False,
    json_log: Annotated[bool, Opt("--json", help="One JSON line per epoch on stdout (for scripts).")] = False,
    **options: Any,
) -> None:
    """Train a classifier on DATA (transfer learning from a pretrained backbone by default)."""
    started = time.perf_counter()  # before torch is imported: a --budget counts the start-up too
    typed = sections({**options, "source": data})
    typed["data"]["source"] = data
    if lr is not None:
        typed["finetune"]["lr"] = None if lr == "auto" else _float("--lr", lr)
    if resume is not None:
        _refuse_with_resume(resume, data, config, out, typed)
        from visiontune.training.pipeline import resume_config

        run_config = resume_config(resume)
    else:
        if data is None and config is None:
            raise typer.BadParameter("give DATA (an image folder or CSV) or --config FILE")
        merged = merge_overrides(load_yaml(config) if config else {}, typed)
        if out is not None:
            merged["out"] = str(out)
        run_config = RunConfig.from_dict(merged)
        _refuse_other_methods_options(run_config.train.method, typed)
    if run_config.train.method == "features":
        with says_stopped():
            result = _train_features(run_config, overwrite=overwrite, quiet=quiet, json_lines=json_log, started=started)
        _print_result(result, quiet=json_log)
        return
    from visiontune.training.pipeline import Hooks, train  # torch, timm: loaded once the options are known to be good

    display = EpochDisplay(quiet=quiet or json_log, json_lines=json_log)
    hooks = Hooks(on_plan=_say_plan(quiet=quiet or json_log), on_member=_say_member(quiet=quiet or json_log))
    with says_stopped():
        try:
            result = train(
                run_config, callbacks=[display], resume=resume, overwrite=overwrite, hooks=hooks, started=started
            )
        finally:  # Ctrl-C or an error mid-epoch: the bar goes before the one-line message comes
            display.close()
    _print_result(result, quiet=json_log)


with_run_options(train_command)


def _refuse_other_methods_options(method: str, sections: dict[str, dict[str, Any]]) -> None:
    """An option of the other method would be silently ignored: refuse it instead, naming it."""
    other = "finetune" if method == "features" else "features"
    typed = [k for k, v in sections[other].items() if v is not None or (k == "lr" and other == "finetune")]
    if typed:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in typed)
        applies = "--method finetune or scratch" if other == "finetune" else "--method features"
        raise typer.BadParameter(f"{names} only apply to {applies}, not --method {method}; leave them out")


def _refuse_with_resume(
    resume: Path, data: str | None, config: Path | None, out: Path | None, sections: dict[str, dict[str, Any]]
) -> None:
    """--resume continues the run exactly as it was configured: anything else typed with it would be ignored."""
    typed = [f"--{k.replace('_', '-')}" for part in sections.values() for k, v in part.items() if v is not None]
    typed = [name for name in typed if name != "--source"]  # DATA, named below
    typed += [name for name, value in (("DATA", data), ("--config", config), ("--out", out)) if value is not None]
    if typed:
        raise typer.BadParameter(
            f"--resume {resume} continues the run with its own config.yaml; {', '.join(dict.fromkeys(typed))}"
            " would be ignored: leave them out (or start a new run)"
        )


def _train_features(run_config: RunConfig, *, overwrite: bool, quiet: bool, json_lines: bool, started: float) -> Any:
    """--method features: a progress bar while images are embedded, then one line (or JSON line) per head."""
    from visiontune.training.pipeline import Hooks, train

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
        plan = _say_plan(quiet=quiet or json_lines)
        hooks = Hooks(on_total=set_total, progress=advance, on_head=on_head, on_plan=plan)
        return train(run_config, overwrite=overwrite, hooks=hooks, started=started)


def _say_plan(*, quiet: bool) -> Any:
    """The recipe and its estimated time, one line before training starts (training.budget)."""
    return None if quiet else lambda message: err_console.print(message, highlight=False)


def _say_member(*, quiet: bool) -> Any:
    """A heading line before each ensemble member trains."""
    if quiet:
        return None
    return lambda member, number, count: err_console.print(
        f"[bold]member {number} of {count}[/] (seed {member.config.train.seed})"
    )


def _float(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{name} takes a number or 'auto'. Received: {text!r}") from None


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
            f"[bold]{trainer.raw_model.arch.get('backbone')}[/]: {counts['total'] / 1e6:.2f} M parameters; "
            f"precision {trainer.precision}, {trainer.accelerator.num_processes} process(es) on {trainer.device}; "
            f"monitor {trainer.monitor.name}"
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
                f"valid_loss {metrics['valid_loss']:.4f}  accuracy {metrics['valid_accuracy']:.4f}  "
                f"balanced {metrics['valid_balanced_accuracy']:.4f}  lr {metrics['lr']:.2e}  "
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
    elif getattr(result, "members", None):
        shown = ", ".join("?" if m["score"] is None else f"{m['score']:.4f}" for m in result.members)
        table.add_row("members", f"{len(result.members)} ({result.members[0]['monitor']} alone: {shown})")
        table.add_row("kept epochs", ", ".join(str(m["kept_epoch"]) for m in result.members))
    else:
        table.add_row("kept epoch", str(result.best_epoch))
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
