"""`--log mlflow` and `export --mlflow --register` against a real MLflow tracking server with a PostgreSQL store.

The PostgreSQL cluster is the one `tune --storage postgresql` is tested on (started here on
loopback, stopped after); the MLflow server runs beside it on loopback, serving artifacts from a
temporary folder. Without PostgreSQL or MLflow the test skips, naming the package (a failure under CI).
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import running_in_ci, write_class_folders
from tests.experiments.test_postgres import free_port, postgres_url, require  # noqa: F401  # postgres_url: a fixture
from visiontune.training.pipeline import train

try:
    import mlflow
    import pandas as pd
except ImportError as missing:  # a skip outside CI, a failure in it (the dev extra installs both)
    if running_in_ci():
        raise
    pytest.skip(f"needs {missing.name}: pip install '.[mlflow]'", allow_module_level=True)

SERVER_START_S = 180


@pytest.fixture(scope="module")
def mlflow_server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    require(__import__("importlib").util.find_spec("psycopg") is not None, "needs psycopg: pip install '.[postgres]'")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    backend = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
               "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, server, folder / "server.log")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_for_health(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"mlflow server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not answering after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def test_a_run_and_its_registered_model_land_on_the_server(
    mlflow_server: str, tmp_path: Path, fashion: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig
    from visiontune.export.mlflow_model import export_mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the default --mlflow-uri
    data = write_class_folders(tmp_path / "data", fashion, per_class=12)
    config = RunConfig(
        DataConfig(source=str(data), valid_pct=0.25),
        ModelConfig(backbone="small_cnn", image_size=28),
        TrainConfig(method="scratch", num_workers=0, augment="none", log=("mlflow",), mlflow_experiment="server"),
        FinetuneConfig(epochs=1, freeze_epochs=1, batch_size=16, lr=3e-3),
        out=str(tmp_path / "run"),
    )
    result = train(config)
    exported = export_mlflow(result.run_dir, register="server-model")

    client = mlflow.MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("server").experiment_id])
    assert run.info.run_id == exported.run_id and run.info.status == "FINISHED"
    assert run.data.params["model.backbone"] == "small_cnn"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "valid_loss"))
    assert steps == [1, 2]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "bundle")} >= {"bundle/model.safetensors"}
    version = client.get_model_version("server-model", exported.version)
    assert version.run_id == run.info.run_id and version.status == "READY"
    image = next((data / "sneaker").glob("*.png"))
    mlflow.set_tracking_uri(mlflow_server)
    try:
        model = mlflow.pyfunc.load_model(exported.registry_uri)  # artifacts downloaded through the server
    finally:
        mlflow.set_tracking_uri(None)
    answer = model.predict(pd.DataFrame({"image": [image.read_bytes()]}))
    import visiontune

    assert answer.loc[0, "label"] == visiontune.load(result.run_dir).predict([image])[0].label
