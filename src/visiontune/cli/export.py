"""`visiontune export MODEL --format onnx`: an ONNX file checked against PyTorch, optionally an int8 twin."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from visiontune.cli.console import console, err_console

if TYPE_CHECKING:
    from visiontune.export import ExportReport

Opt = typer.Option
INT8_ACCURACY_WARNING = 0.01


def export_command(
    model: Annotated[str, typer.Argument(help="Bundle folder or run folder.")],
    export_format: Annotated[str, Opt("--format", help="Export format: onnx.")] = "onnx",
    out: Annotated[Path | None, Opt(help="Output file (default: model.onnx inside the bundle folder).")] = None,
    quantize: Annotated[
        str | None, Opt(help="int8: also write an int8 model (static, calibrated on training images) and compare.")
    ] = None,
    opset: Annotated[int, Opt(help="ONNX opset version (18-23).")] = 18,
    data: Annotated[
        Path | None, Opt(help="Where the training data is now, if it moved: the check re-scores its validation split.")
    ] = None,
    split: Annotated[str, Opt(help="Split the check re-scores: valid or test.")] = "valid",
    calibration_images: Annotated[int, Opt(min=1, help="Training images that calibrate --quantize int8.")] = 256,
    mlflow: Annotated[bool, Opt("--mlflow", help="Log the bundle as an MLflow model (pyfunc) instead.")] = False,
    register: Annotated[str | None, Opt(help="With --mlflow: register a version under this name.")] = None,
    mlflow_uri: Annotated[str | None, Opt(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI).")] = None,
    mlflow_experiment: Annotated[str | None, Opt(help="MLflow experiment when the run has no MLflow run.")] = None,
) -> int:
    """Export a trained model to ONNX and check it gives PyTorch's answers on real images (or log it to MLflow)."""
    if mlflow or register:
        from visiontune.cli.export_mlflow import export_to_mlflow

        onnx = [name for name, value in (("--out", out), ("--quantize", quantize), ("--data", data)) if value]
        return export_to_mlflow(
            model, register=register, uri=mlflow_uri, experiment=mlflow_experiment, onnx_options=onnx
        )
    from visiontune.export import ExportConfig, export_model

    config = ExportConfig(
        format=export_format,
        out=str(out) if out else None,
        opset=opset,
        quantize=quantize,
        data=str(data) if data else None,
        split=split,
        calibration_images=calibration_images,
    )
    with err_console.status("exporting and checking"):
        report = export_model(model, config)
    _print_report(report, opset)
    return 0


def _print_report(report: ExportReport, opset: int) -> None:
    parity = report.parity
    say = functools.partial(console.print, highlight=False)  # numbers in the lines are not to be coloured
    say(f"exported {report.path} ({_mb(report.size_bytes)}, opset {opset}, dynamic batch)")
    say(f"checked on {report.images}:")
    say(
        f"  probabilities: max |PyTorch - ONNX| = {parity.max_abs_diff:.1e} (limit {report.tolerance:g}) [green]ok[/];"
        f" top-1 agreement {parity.agreement:.2%}"
    )
    if parity.reference_accuracy is not None:
        say(f"  accuracy: PyTorch {parity.reference_accuracy:.2%}, ONNX {parity.candidate_accuracy:.2%}")
    q = report.quantized
    if q is None:
        return
    c = q.comparison
    say(f"int8: {q.path} (calibrated on {q.calibration})")
    say(f"  size {_mb(q.float_size_bytes)} -> {_mb(q.size_bytes)} ({q.float_size_bytes / q.size_bytes:.1f}x smaller)")
    say(
        f"  speed {q.float_speed:.0f} -> {q.int8_speed:.0f} images/s ({q.int8_speed / q.float_speed:.2f}x;"
        f" onnxruntime on this CPU, batches of {q.batch})"
    )
    accuracy = ""
    if c.reference_accuracy is not None and c.candidate_accuracy is not None:
        accuracy = f"accuracy {c.reference_accuracy:.2%} -> {c.candidate_accuracy:.2%}, "
        if c.candidate_accuracy < c.reference_accuracy - INT8_ACCURACY_WARNING:
            err_console.print("[yellow]warning:[/] int8 costs over 1 point of accuracy: prefer the float model")
    say(f"  {accuracy}top-1 agreement with float {c.agreement:.2%}, max probability difference {c.max_abs_diff:.3f}")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
