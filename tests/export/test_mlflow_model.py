"""`visiontune export RUN --mlflow --register NAME`: MLflow's own loader answers as `visiontune predict` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from visiontune.cli.main import app

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")


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
