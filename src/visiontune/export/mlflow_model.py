"""`visiontune export RUN --mlflow [--register NAME]`: the bundle as an MLflow model (a pyfunc flavour).

The model holds the bundle folder as an artifact and `BundleModel`, which loads it with
`visiontune.load` and answers with `Predictor.predict`: the same labels and calibrated
probabilities as `visiontune predict`, so `mlflow.pyfunc.load_model(uri).predict(frame)` and
`mlflow models serve -m models:/NAME/1` work on it. It is logged as code (MLflow's "models from
code"), not as a pickle. Input: a DataFrame with an `image` column of encoded image bytes (PNG,
JPEG, ...; base64 in a served model's JSON, which MLflow decodes for the binary column). Output,
one row per image: `label`, `probability`, `unknown`, the top-k `labels` and `probabilities`,
and `error` (empty when the image was read). Params: `topk` (5) and `tta` (false).

The model goes into the run's own MLflow run when the run was trained with `--log mlflow` on the
same store, else into a new run; `register` adds a version to the model registry.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from visiontune.bundle import read_meta, resolve_bundle_path
from visiontune.data.images import open_image
from visiontune.runs.folder import RunFolder
from visiontune.system import library_versions
from visiontune.training.mlflow_log import experiment_id, mlflow_client, store_errors
from visiontune.version import __version__

log = logging.getLogger(__name__)

ARTIFACT = "bundle"  # the bundle folder's name among the model's artifacts
MODEL_NAME = "model"  # the logged model's name within its run
ENTRY = Path(__file__).with_name("mlflow_entry.py")  # the code MLflow loads the model from
REQUIREMENTS = ("torch", "torchvision", "timm", "numpy", "pillow", "safetensors", "pandas")
DEFAULT_PARAMS = {"topk": 5, "tta": False}
TRACKING_VARIABLE = "MLFLOW_TRACKING_URI"  # the store a process (and its children) use when none is named


class BundleModel(mlflow.pyfunc.PythonModel):
    """A visiontune bundle behind MLflow's pyfunc interface (loaded once, on the CPU or the GPU there is)."""

    def load_context(self, context: Any) -> None:
        from visiontune.predict import load

        self.predictor = load(context.artifacts[ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        settings = {**DEFAULT_PARAMS, **(params or {})}
        images = [_decode(value) for value in model_input["image"]]
        readable = [i for i, image in enumerate(images) if not isinstance(image, str)]
        answers = self.predictor.predict([images[i] for i in readable], topk=int(settings["topk"]),
                                         tta=bool(settings["tta"]))  # fmt: skip
        rows = [_row(None, reason) if isinstance(reason, str) else None for reason in images]
        for position, answer in zip(readable, answers, strict=True):
            rows[position] = _row(answer, answer.error)
        return pd.DataFrame(rows)


def _decode(value: Any) -> Image.Image | str:
    """An image from encoded bytes (base64 text is decoded too), or the reason it can't be read."""
    import base64

    try:
        data = base64.b64decode(value, validate=True) if isinstance(value, str) else bytes(value)
        return open_image(io.BytesIO(data))
    except Exception as exc:  # the Predictor's contract: one bad image is an error row, not an exception
        return str(getattr(exc, "reason", None) or exc) or "can't be read"


def _row(answer: Any, error: str | None) -> dict[str, Any]:
    predictions = answer.predictions if answer is not None else []
    return {
        "label": predictions[0]["label"] if predictions else "",
        "probability": float(predictions[0]["probability"]) if predictions else float("nan"),
        "unknown": bool(answer.unknown) if answer is not None else False,
        "labels": [p["label"] for p in predictions],
        "probabilities": [float(p["probability"]) for p in predictions],
        "error": error or "",
    }


@dataclass(frozen=True)
class MLflowExport:
    """Where the model went: its URI, the run that holds it, and the registered version (when asked)."""

    model_uri: str
    run_id: str
    experiment_id: str
    registered: str | None = None  # NAME
    version: str | None = None

    @property
    def registry_uri(self) -> str | None:
        return f"models:/{self.registered}/{self.version}" if self.registered else None


def export_mlflow(
    model: str | Path, *, uri: str | None = None, experiment: str | None = None, register: str | None = None
) -> MLflowExport:
    """Log the bundle of `model` (a run or bundle folder) as an MLflow pyfunc model; register it as `register`."""
    bundle = resolve_bundle_path(model)
    meta = read_meta(bundle)
    client = mlflow_client(uri)
    with _fluent_uri(client.tracking_uri), store_errors(client):  # log_model works on the fluent API's active run
        run_id, experiment = _target_run(client, bundle, experiment)
        info = _log_model(run_id, bundle, meta, register)
    version = str(info.registered_model_version) if register and info.registered_model_version else None
    return MLflowExport(info.model_uri, run_id, experiment, register, version)


@contextmanager
def _fluent_uri(uri: str) -> Iterator[None]:
    """The fluent API pointed at `uri` for the body, then left as found.

    `mlflow.set_tracking_uri` also sets (or, given None, deletes) MLFLOW_TRACKING_URI in os.environ, and
    a URI it was given outranks that variable afterwards: restoring `get_tracking_uri()`'s answer would
    pin this process (a notebook, a test session) to one store for good, and restoring None would
    delete the user's own variable. So both are saved and put back.
    """
    from mlflow.tracking._tracking_service import utils  # where the fluent API keeps a URI it was given

    given, variable = getattr(utils, "_tracking_uri", None), os.environ.get(TRACKING_VARIABLE)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(given)
        if variable is None:
            os.environ.pop(TRACKING_VARIABLE, None)
        else:
            os.environ[TRACKING_VARIABLE] = variable


def _log_model(run_id: str, bundle: Path, meta: Any, register: str | None) -> Any:
    example = pd.DataFrame({"image": _example_images(bundle, meta)})
    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(ENTRY),
            artifacts={ARTIFACT: str(bundle)},
            input_example=(example, DEFAULT_PARAMS),
            signature=_signature(example),
            pip_requirements=_requirements(),
            registered_model_name=register,
            metadata={"visiontune_classes": list(meta.classes), "visiontune_arch": meta.arch.get("backbone")},
        )


def _target_run(client: Any, bundle: Path, experiment: str | None) -> tuple[str, str]:
    """The run's own MLflow run when this store has it, else a new run named after the run folder."""
    run = RunFolder(bundle.parent)
    recorded = (run.info().get("mlflow") or {}) if run.file("run.json").is_file() else {}
    if recorded.get("run_id") and experiment is None:
        try:
            found = client.get_run(recorded["run_id"])
            return found.info.run_id, found.info.experiment_id
        except Exception:  # another store, or deleted: a new run below
            log.info("run %s is not in %s: the model goes into a new run", recorded["run_id"], client.tracking_uri)
    name = bundle.parent.name if bundle.name == "model" else bundle.name
    chosen = experiment_id(client, experiment or "visiontune-models")
    created = client.create_run(chosen, tags={"mlflow.runName": name, "visiontune.kind": "export"})
    return created.info.run_id, chosen


def _example_images(bundle: Path, meta: Any) -> list[bytes]:
    """Two validation images of the run as PNG bytes; a grey image of the model's size when the data is gone."""
    run = RunFolder(bundle.parent)
    files = run.split_files("valid", data_root=meta.training.get("data_root"))
    found = [path for path, _ in files or [] if path is not None][:2]
    if found:
        return [_png(open_image(path)) for path in found]
    height, width = meta.preprocessing.image_size
    return [_png(Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)))]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _signature(example: pd.DataFrame) -> Any:
    """Inputs from the example, outputs from the answers' columns, and the topk / tta params."""
    from mlflow.models import infer_signature

    output = pd.DataFrame([_row(None, "example")])
    output.loc[0, "label"], output.loc[0, "probability"] = "class", 1.0
    output.at[0, "labels"], output.at[0, "probabilities"] = ["class"], [1.0]
    return infer_signature(example, output, params=DEFAULT_PARAMS)


def _requirements() -> list[str]:
    versions = library_versions(REQUIREMENTS)
    return [
        f"visiontune=={__version__}",
        *(f"{name}=={v}" for name, v in versions.items() if name in REQUIREMENTS and v),
    ]
