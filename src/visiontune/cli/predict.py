"""`visiontune predict MODEL IMAGE|DIR|GLOB ...`: top-k classes per image as a table, JSON or CSV.

Exit status 0 when every input was predicted; 3 when some could not be read (each gets an error
row, the others are still predicted), so scripts can tell.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from visiontune.cli import distributed
from visiontune.cli.console import console, err_console, progress_bar

Opt = typer.Option
FORMATS = ("table", "json", "csv")
TABLE_ROWS = 50  # more than this in the terminal is noise: the CSV has them all
PARTIAL_FAILURE = 3
DEFAULT_CSV = "predictions.csv"  # a table of folders also writes every row here


def predict_command(
    model: Annotated[str, typer.Argument(help="Bundle folder, run folder, or a backbone name (ImageNet classes).")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")],
    topk: Annotated[int, Opt("--topk", "-k", min=1, help="Classes to show per image, best first.")] = 5,
    output_format: Annotated[str, Opt("--format", "-f", help="table, json or csv.")] = "table",
    out: Annotated[
        Path | None, Opt(help="Write the JSON/CSV here (default: stdout); for folders, the CSV of all predictions.")
    ] = None,
    grid: Annotated[Path | None, Opt(help="Also draw the images with their top-3 into this PNG.")] = None,
    tta: Annotated[bool, Opt("--tta", help="Average over the image, its mirror and centre zooms.")] = False,
    unknown: Annotated[
        bool, Opt("--unknown/--no-unknown", help="Say 'unknown' below the bundle's calibrated confidence.")
    ] = True,
    unknown_score: Annotated[
        str | None,
        Opt(
            help="Score for 'unknown': knn (distance to training images), msp (max probability) or energy;"
            " default: the bundle's (knn when it has the detector)."
        ),
    ] = None,
    batch_size: Annotated[int | None, Opt(min=1, help="Images per forward pass (default: by device).")] = None,
    device: Annotated[str, Opt(help="auto, cpu, cuda or cuda:N.")] = "auto",
    backend: Annotated[
        str, Opt(help="torch, or onnx: onnxruntime on the CPU (a .onnx MODEL always uses it).")
    ] = "torch",
    overwrite: Annotated[
        bool, Opt("--overwrite", help="Replace an existing --out, predictions.csv or --grid file.")
    ] = False,
    coverage: Annotated[
        float | None,
        Opt(help="Prediction sets hold the true class with this probability (default: the bundle's, 0.9)."),
    ] = None,
    ray: Annotated[
        str | None, Opt(help="Run on Ray: auto (this machine's cluster, or a local one) or a head's host:port.")
    ] = None,
    concurrency: distributed.Concurrency = None,
    num_gpus_per_worker: distributed.GpusPerWorker = 0.0,
    num_cpus_per_worker: distributed.CpusPerWorker = 1.0,
) -> int:
    """Predict the class of each image with a trained model (or a backbone's ImageNet classes)."""
    from visiontune.errors import ConfigError, DatasetError
    from visiontune.predict.inputs import expand_inputs

    if output_format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}. Received: {output_format!r}")
    if ray is not None:  # Parquet shards in --out, from workers on a Ray cluster (cli/distributed.py)
        if output_format != "table" or grid is not None or device != "auto":
            raise ConfigError("--ray writes Parquet shards to --out: --format, --grid and --device don't apply")
        options = distributed.ray_options(ray, concurrency, num_gpus_per_worker, num_cpus_per_worker, batch_size)
        return distributed.predict_on_ray(model, inputs, out, options, topk=topk, tta=tta, unknown=unknown,
                                          unknown_score=unknown_score, coverage=coverage, backend=backend)  # fmt: skip
    expanded = expand_inputs(inputs)
    csv_out = out or (Path(DEFAULT_CSV) if output_format == "table" and expanded.folders else None)
    for target, option in ((csv_out, "--out"), (grid, "--grid")):
        _check_target(target, option, overwrite=overwrite)  # before any work: nothing is replaced unasked
    for pattern in expanded.empty:
        err_console.print(f"[yellow]warning:[/] {pattern}: no image files found", highlight=False)
    if not expanded.paths:
        raise DatasetError(f"no images to predict in {', '.join(inputs)}; give image files, folders or patterns")
    from visiontune.predict import load  # torch: once the arguments are known to be good

    predictor = load(model, device=device, backend=backend)
    with progress_bar("predicting", quiet=output_format != "table") as (advance, set_total):
        set_total(len(expanded.paths))
        predictions = predictor.predict(
            expanded.paths,
            topk=topk,
            tta=tta,
            unknown=unknown,
            unknown_score=unknown_score,
            batch_size=batch_size,
            on_batch=advance,
            coverage=coverage,
        )
    rows = [p.to_dict() for p in predictions]
    if output_format == "json":
        _emit(json.dumps(rows, indent=2) + "\n", out)
    elif output_format == "csv":
        _emit(_csv(rows, topk), out)
    else:
        _print_table(predictions, topk, sets=predictor.calibration.conformal is not None)
        if csv_out is not None:
            _emit(_csv(rows, topk), csv_out)
            console.print(f"all {len(rows)} predictions: {csv_out}", highlight=False)
        _print_summary(predictions, calibrated=_threshold_known(predictor, unknown_score))
        _print_set_note(predictor, coverage)
    if output_format != "table" and out is not None:
        err_console.print(f"{len(rows)} predictions: {out}", highlight=False)
    if grid is not None:
        from visiontune.predict.grid import plot_prediction_grid

        drawn = plot_prediction_grid(predictions, grid)
        err_console.print(f"grid of {drawn} images: {grid}", highlight=False)
    failed = sum(p.error is not None for p in predictions)
    if failed:
        err_console.print(f"[red]{failed} of {len(predictions)} inputs could not be read[/]", highlight=False)
        return PARTIAL_FAILURE
    return 0


def _check_target(path: Path | None, option: str, *, overwrite: bool) -> None:
    """Refuse to replace an existing file without --overwrite, and a folder always (one line, naming the fix)."""
    from visiontune.errors import ConfigError

    if path is None or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give {option} a file name")
    if not overwrite:
        raise ConfigError(
            f"{path} already exists: add --overwrite to replace it, or give {option} another file (nothing was written)"
        )


def _threshold_known(predictor: object, score: str | None) -> bool:
    return predictor.calibration.threshold(score) is not None  # type: ignore[attr-defined]


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        console.file.write(text)
        return
    from visiontune.io import atomic_write_text

    atomic_write_text(out, text)


def _csv(rows: list[dict], topk: int) -> str:
    """One row per input: path, label, probability, unknown, error, then label_2/probability_2 ... up to top-k."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["path", "label", "probability", "unknown", "error", "prediction_set"]
    for k in range(2, topk + 1):
        header += [f"label_{k}", f"probability_{k}"]
    writer.writerow(header)
    for row in rows:
        ranked = row["predictions"]
        first = ranked[0] if ranked else {"label": "", "probability": ""}
        line = [row["path"], first["label"], first["probability"], row["unknown"], row["error"] or ""]
        line.append("" if row["prediction_set"] is None else "|".join(row["prediction_set"]))
        for k in range(1, topk):
            line += [ranked[k]["label"], ranked[k]["probability"]] if k < len(ranked) else ["", ""]
        writer.writerow(line)
    return buffer.getvalue()


def _print_table(predictions: list, topk: int, *, sets: bool = False) -> None:
    table = Table(title=None, show_lines=False)
    table.add_column("image", overflow="fold")
    table.add_column("prediction")
    table.add_column("probability", justify="right")
    if sets:
        table.add_column("set", overflow="fold")
    if topk > 1:
        table.add_column("next")
    base = _common_folder([p.path for p in predictions if p.path])
    for p in predictions[:TABLE_ROWS]:
        name = os.path.relpath(os.path.abspath(p.path), base) if p.path and base else p.path or "<input>"
        if p.error:
            table.add_row(name, f"[red]error: {p.error}[/]", "", *([""] * sets), *([""] * (topk > 1)))
            continue
        best = p.predictions[0]
        label = f"[dark_orange]unknown[/] (best guess: {best['label']})" if p.unknown else best["label"]
        cells = [name, label, f"{best['probability']:.3f}"]
        if sets:
            cells.append(set_cell(p.prediction_set))
        if topk > 1:
            cells.append(", ".join(f"{q['label']} {q['probability']:.2f}" for q in p.predictions[1:]))
        table.add_row(*cells)
    console.print(table)
    if len(predictions) > TABLE_ROWS:
        console.print(f"... and {len(predictions) - TABLE_ROWS} more", highlight=False)


def set_cell(labels: list[str] | None) -> str:
    """A prediction set for the table: its labels (one = confident, several = ambiguous)."""
    if labels is None:
        return ""
    if not labels:
        return "(none needed)"  # randomised sets: a very confident answer, the top-1 stands
    return " | ".join(labels) if len(labels) <= 4 else f"{' | '.join(labels[:4])} +{len(labels) - 4}"


def _print_set_note(predictor: object, coverage: float | None) -> None:
    conformal = predictor.calibration.conformal  # type: ignore[attr-defined]
    if conformal is None:
        console.print("(no prediction sets: this bundle was trained before conformal calibration; retrain for them)")
        return
    level = coverage or conformal.coverage
    kind = "per class" if conformal.mondrian else "over all classes"
    console.print(f"set: the labels that hold the true class {level:.0%} of the time ({kind}); "
                  "one label = confident, several = ambiguous", highlight=False)  # fmt: skip


def _common_folder(paths: list[str]) -> str | None:
    """The folder all paths share, so the table shows short names that still tell files apart."""
    try:
        common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else None
    except ValueError:  # different drives
        return None
    return common if common and os.path.dirname(common) != common else None  # not the file system's root


def _print_summary(predictions: list, *, calibrated: bool) -> None:
    counts = Counter("error" if p.error else "unknown" if p.unknown else p.label for p in predictions)
    if len(predictions) > 1:
        parts = ", ".join(f"{label} {n}" for label, n in counts.most_common(10))
        console.print(f"{len(predictions)} images: {parts}", highlight=False)
    if not calibrated:
        console.print("(no calibrated 'unknown' threshold for this model: every answer is the best guess)")
