"""`visiontune export RUN --mlflow [--register NAME]`: the bundle as an MLflow model, and where it went."""

from __future__ import annotations

import typer

from visiontune.cli.console import console, err_console


def export_to_mlflow(
    model: str, *, register: str | None, uri: str | None, experiment: str | None, onnx_options: list[str]
) -> int:
    """Log MODEL's bundle as an MLflow pyfunc model (registered as `register` when given); print its URIs."""
    if onnx_options:
        names = ", ".join(onnx_options)
        raise typer.BadParameter(f"{names}: options of the ONNX export; leave them out with --mlflow")
    from visiontune.training.tracking import require

    require("mlflow")  # one line naming the extra when it is missing
    from visiontune.export.mlflow_model import export_mlflow

    with err_console.status("logging the MLflow model"):
        done = export_mlflow(model, uri=uri, experiment=experiment, register=register)
    where = f"run {done.run_id}, experiment {done.experiment_id}"
    console.print(f"MLflow model: {done.model_uri} ({where})", highlight=False)
    if done.registry_uri:
        console.print(f"registered: {done.registry_uri}", highlight=False)
    served = done.registry_uri or done.model_uri
    console.print(f"serve it: mlflow models serve -m {served} --env-manager local", highlight=False)
    return 0
