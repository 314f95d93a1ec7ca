"""`visiontune export RUN --mlflow --register NAME`: MLflow's own loader answers as `visiontune predict` does."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from visiontune.cli.main import app

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")
SERVE_START_S = 240


def test_the_registered_model_predicts_the_labels_and_probabilities_of_visiontune_predict(
    finetuned_run: Path, trained_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts (./mlruns) stay in the test's folder
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner = CliRunner()
    exported = runner.invoke(app, ["export", str(finetuned_run), "--mlflow", "--register", "fashion",
                                   "--mlflow-uri", uri], env={"COLUMNS": "200"})  # fmt: skip
    assert exported.exit_code == 0, exported.output
    assert "registered: models:/fashion/1" in exported.output

    client = mlflow.MlflowClient(uri)
    version = client.get_model_version("fashion", "1")
    assert version.status == "READY"
    images = [sorted((trained_data / "test" / name).glob("*.png"))[0] for name in ("trouser", "sneaker")]
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/fashion/1")
    finally:
        mlflow.set_tracking_uri(None)
    signature = model.metadata.signature
    assert signature.inputs.input_names() == ["image"] and "probabilities" in signature.outputs.input_names()
    answers = model.predict(pd.DataFrame({"image": [path.read_bytes() for path in images]}))

    predicted = runner.invoke(app, ["predict", str(finetuned_run), *map(str, images), "--format", "json"])
    assert predicted.exit_code == 0, predicted.output
    expected = json.loads(predicted.stdout)
    assert list(answers["label"]) == [row["predictions"][0]["label"] for row in expected]
    for got, row in zip(answers.itertuples(), expected, strict=True):
        assert list(got.labels) == [p["label"] for p in row["predictions"]]
        assert list(got.probabilities) == pytest.approx([p["probability"] for p in row["predictions"]], abs=1e-6)
        assert got.unknown == row["unknown"] and got.error == ""
    assert list(answers["label"]) == ["trouser", "sneaker"]  # and the model is right about these two

    broken = model.predict(pd.DataFrame({"image": [b"not an image", images[0].read_bytes()]}), params={"topk": 2})
    assert broken.loc[0, "error"] and broken.loc[0, "label"] == ""  # one bad image: an error row, not an exception
    assert len(broken.loc[1, "labels"]) == 2


def test_export_leaves_the_processs_tracking_uri_as_it_found_it(
    finetuned_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook that exports to one store and then trains must still log where MLFLOW_TRACKING_URI says."""
    from visiontune.export.mlflow_model import export_mlflow

    monkeypatch.chdir(tmp_path)
    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mine)
    exported = export_mlflow(finetuned_run, uri=f"sqlite:///{tmp_path / 'other.db'}", experiment="other")
    assert mlflow.MlflowClient(f"sqlite:///{tmp_path / 'other.db'}").get_run(exported.run_id)
    assert os.environ["MLFLOW_TRACKING_URI"] == mine and mlflow.get_tracking_uri() == mine
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    export_mlflow(finetuned_run, uri=f"sqlite:///{tmp_path / 'other.db'}", experiment="other")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # not pinned to the store it exported to
    assert mlflow.get_tracking_uri() != f"sqlite:///{tmp_path / 'other.db'}"


@pytest.mark.slow
def test_mlflow_models_serve_answers_base64_images_as_predict_does(
    finetuned_run: Path, trained_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.experiments.test_postgres import free_port
    from visiontune.export.mlflow_model import export_mlflow
    from visiontune.predict import load

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exported = export_mlflow(finetuned_run, uri=uri, experiment="serve")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", exported.model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where the server finds the model
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # its uvicorn
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2] / "src"))  # this checkout's visiontune
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        image = sorted((trained_data / "test" / "sneaker").glob("*.png"))[0]
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image.read_bytes()).decode()]]}}
        answer = _post_when_up(f"http://127.0.0.1:{port}/invocations", body, server, tmp_path / "serve.log")
    finally:
        server.terminate()
        server.wait(timeout=60)
    (row,) = answer["predictions"]
    expected = load(finetuned_run).predict([image])[0]
    assert row["label"] == expected.label and row["probabilities"] == pytest.approx(
        [p["probability"] for p in expected.predictions], abs=1e-6
    )


def _post_when_up(url: str, body: dict, server: subprocess.Popen[bytes], log: Path) -> dict:
    data = json.dumps(body).encode()
    deadline = time.monotonic() + SERVE_START_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"mlflow models serve exited:\n{log.read_text()[-3000:]}"
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # up, but refusing: say why
            pytest.fail(f"{error}: {error.read().decode()[:2000]}")
        except OSError:
            time.sleep(1)
    pytest.fail(f"mlflow models serve not answering after {SERVE_START_S} s:\n{log.read_text()[-3000:]}")
