"""`visiontune evaluate MODEL DATA`: metrics, figures and report.html for a bundle on labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from visiontune.cli import options
from visiontune.cli.console import console, progress_bar


def evaluate_command(
    model: Annotated[str, typer.Argument(help="A run folder (its final bundle) or a bundle folder.")],
    data: Annotated[
        str,
        typer.Argument(help="Labelled images: the run's own data (its test split is scored) or another folder/CSV."),
    ],
    split: Annotated[
        str | None,
        typer.Option(
            "--split", help="valid or test (the run's own data); test, valid, train or all (other data). Default: test."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder. Default: RUN/eval for a run folder, else ./eval.")
    ] = None,
    ood: Annotated[
        Path | None,
        typer.Option("--ood", help="A folder of images of none of the classes: AUROC of the unknown score."),
    ] = None,
    top_losses: Annotated[
        int, typer.Option("--top-losses", min=0, max=256, help="Images in top_losses.png and gradcam.png.")
    ] = 16,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Images per forward pass (default: by device).")
    ] = None,
    label_regex: options.LabelRegex = None,
    corrections: options.Corrections = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Only the summary line.")] = False,
) -> int:
    """Score a model on labelled images: metrics.json, confusion matrix, top losses, Grad-CAM, report.html."""
    from visiontune.evaluation.evaluate import EvalConfig, evaluate

    config = EvalConfig(
        split=split,
        out=str(out) if out else None,
        ood=str(ood) if ood else None,
        top_losses=top_losses,
        batch_size=batch_size,
        label_regex=label_regex,
        corrections=corrections,
    )
    with progress_bar("scoring images", quiet=quiet) as (advance, set_total):
        result = evaluate(model, data, config, progress=advance, on_total=set_total)
    if not quiet:
        console.print(_table(result.metrics))
    console.print(
        f"{result.metrics['images']} images ({result.metrics['split']}): accuracy {result.metrics['accuracy']:.4f}. "
        f"Report: {result.report}",
        soft_wrap=True,
    )
    return 0


def _table(metrics: dict[str, Any]) -> Table:
    table = Table(title="Evaluation", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "accuracy",
        "balanced_accuracy",
        "top_3_accuracy",
        "top_5_accuracy",
        "log_loss",
        "ece_before",
        "ece_after",
    ):
        if metrics.get(key) is not None:
            interval = (metrics.get("intervals") or {}).get(key)
            shown = f"{metrics[key]:.4f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
            table.add_row(key.replace("_", " ") + (" (95% interval)" if interval else ""), shown)
    sets = metrics.get("prediction_sets") or {}
    if "coverage" in sets:
        table.add_row(f"set coverage (target {sets['target']:.0%})",
                      f"{sets['coverage']:.4f} [{sets['interval'][0]:.3f}, {sets['interval'][1]:.3f}]")  # fmt: skip
        table.add_row("mean set size", f"{sets['mean_size']:.2f}")
    for pair in metrics["most_confused"][:3]:
        table.add_row(f"confused: {pair['actual']} -> {pair['predicted']}", str(pair["count"]))
    ood = metrics.get("ood")
    if ood:
        table.add_row(f"OOD AUROC ({ood['score']})", f"{ood['auroc']:.4f}")
        if ood["flagged_ood"] is not None:
            table.add_row("OOD flagged unknown", f"{ood['flagged_ood']:.1%}")
    return table
