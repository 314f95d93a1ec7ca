"""The HTTP API with FastAPI's TestClient: the same answers as `predict`, every way of sending an image, the key."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.serve.conftest import BASE_URL, jpeg_bytes
from visiontune.bundle import read_meta
from visiontune.predict import Predictor


def _expected(predictor: Predictor, path: Path, topk: int = 5) -> dict[str, Any]:
    return predictor.predict([path], topk=topk)[0].to_dict()


def _same_answer(got: dict[str, Any], expected: dict[str, Any], name: str | None) -> None:
    assert got["path"] == name
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expected["predictions"]]
    for ours, theirs in zip(got["predictions"], expected["predictions"], strict=True):
        assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-5)
    assert got["unknown"] == expected["unknown"] and got["error"] is None


def test_health_and_info_describe_the_model(client: TestClient, finetuned_run: Path) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["batching"]["max_batch"] == 32
    info = client.get("/info").json()
    meta = read_meta(finetuned_run)
    assert info["classes"] == meta.classes and info["num_classes"] == len(meta.classes)
    assert info["architecture"] == meta.arch["backbone"] and info["image_size"] == list(meta.preprocessing.image_size)
    assert info["metrics"]["valid_accuracy"] == pytest.approx(meta.metrics["valid_accuracy"])
    assert info["calibration"]["temperature"] == pytest.approx(meta.calibration.temperature)
    assert info["api_key_required"] is False


def test_predict_multipart_is_one_item_of_predict_json(
    client: TestClient, served_predictor: Predictor, test_images: list[Path]
) -> None:
    for path in test_images[::7]:
        response = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
        assert response.status_code == 200, response.text
        _same_answer(response.json(), _expected(served_predictor, path), path.name)


def test_predict_base64_json_data_url_and_raw_body(
    client: TestClient, served_predictor: Predictor, test_images: list[Path]
) -> None:
    path = test_images[3]
    expected = _expected(served_predictor, path, topk=2)
    encoded = base64.b64encode(path.read_bytes()).decode()
    _same_answer(client.post("/predict?topk=2", json={"image": encoded}).json(), expected, "image")
    data_url = client.post("/predict?topk=2", json={"image": f"data:image/png;base64,{encoded}"})
    _same_answer(data_url.json(), expected, "image")
    octets = {"Content-Type": "application/octet-stream"}
    raw = client.post("/predict?topk=2", content=path.read_bytes(), headers=octets)
    _same_answer(raw.json(), expected, "<body>")


def test_jpeg_upload_is_decoded_like_a_jpeg_file(
    client: TestClient, served_predictor: Predictor, test_images: list[Path], tmp_path: Path
) -> None:
    data = jpeg_bytes(test_images[0])
    (tmp_path / "photo.jpg").write_bytes(data)
    response = client.post("/predict", files={"file": ("photo.jpg", data, "image/jpeg")})
    _same_answer(response.json(), _expected(served_predictor, tmp_path / "photo.jpg"), "photo.jpg")


def test_batch_answers_in_order_with_an_error_per_unreadable_file(
    client: TestClient, served_predictor: Predictor, test_images: list[Path]
) -> None:
    chosen = test_images[:4]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in chosen]
    files.insert(2, ("files", ("notes.jpg", b"<html><body>hello</body></html>", "image/jpeg")))
    response = client.post("/predict/batch?topk=3", files=files)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert [a["path"] for a in answers] == [chosen[0].name, chosen[1].name, "notes.jpg", chosen[2].name, chosen[3].name]
    bad = answers.pop(2)
    assert bad["predictions"] == [] and "HTML page" in bad["error"]
    for answer, path in zip(answers, chosen, strict=True):
        _same_answer(answer, _expected(served_predictor, path, topk=3), path.name)
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in chosen[:2]]
    as_json = client.post("/predict/batch?topk=3", json={"images": encoded}).json()
    assert [a["path"] for a in as_json] == ["images[0]", "images[1]"]
    assert [a["predictions"][0]["label"] for a in as_json] == [a["predictions"][0]["label"] for a in answers[:2]]


def test_topk_is_checked_and_capped_at_the_class_count(client: TestClient, test_images: list[Path]) -> None:
    files = {"file": ("a.png", test_images[0].read_bytes(), "image/png")}
    assert len(client.post("/predict?topk=50", files=files).json()["predictions"]) == 3  # 3 classes
    response = client.post("/predict?topk=0", files=files)
    assert response.status_code == 422 and "topk" in response.json()["error"]


def test_api_key_protects_predictions_only(make_client: Callable[..., TestClient], test_images: list[Path]) -> None:
    client = make_client(api_key="s3cret-key")
    files = {"file": ("a.png", test_images[0].read_bytes(), "image/png")}
    missing = client.post("/predict", files=files)
    assert missing.status_code == 401 and "API key" in missing.json()["error"]
    assert client.post("/predict", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/predict/batch", files={"files": files["file"]}).status_code == 401
    assert client.post("/predict", files=files, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert client.post("/predict", files=files, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    for open_path in ("/", "/health", "/info", "/docs", "/openapi.json"):
        assert client.get(open_path).status_code == 200, open_path
    assert client.get("/info").json()["api_key_required"] is True


def test_upload_and_pixel_limits_answer_413(make_client: Callable[..., TestClient], test_images: list[Path]) -> None:
    data = jpeg_bytes(test_images[0], size=256)
    assert len(data) > 2000
    small_uploads = make_client(max_upload_mb=0.002)
    response = small_uploads.post("/predict", files={"file": ("big.jpg", data, "image/jpeg")})
    assert response.status_code == 413 and "big.jpg" in response.json()["error"]
    few_pixels = make_client(max_pixels=28 * 28 - 1)  # the Fashion-MNIST images are 28 x 28
    response = few_pixels.post("/predict", files={"file": ("a.png", test_images[0].read_bytes(), "image/png")})
    assert response.status_code == 413 and "28x28" in response.json()["error"]
    assert few_pixels.get("/health").status_code == 200


def test_the_page_and_docs_load_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert 'type="file"' in html and 'accept="image/*"' in html and "capture=" in html
    docs = client.get("/docs").text
    for text in (html, docs, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    for asset in ("/static/app.js", "/static/style.css", "/static/favicon.svg", "/docs-assets/swagger-ui-bundle.js"):
        assert client.get(asset).status_code == 200, asset
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "X-API-Key" in str(schema["components"]["securitySchemes"])


def test_serving_an_onnx_file_gives_torch_top1_on_the_test_split(
    finetuned_onnx: Any, served_predictor: Predictor, test_images: list[Path]
) -> None:
    """`visiontune serve model.onnx` (backend onnx, loaded by the app's own start-up): PyTorch's answers."""
    from visiontune.serve import ServeConfig, create_app

    app = create_app(ServeConfig(model=str(finetuned_onnx.path), backend="onnx"))
    with TestClient(app, base_url=BASE_URL) as client:
        assert client.get("/info").json()["backend"] == "onnx"
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in test_images]
        answers = client.post("/predict/batch?topk=1", files=files).json()
    # the graph's embeddings and the bank in its metadata give the bundle's own k-NN score
    expected = served_predictor.predict(test_images, topk=1)
    assert {a["unknown_score"]["name"] for a in answers} == {p.score_name for p in expected} == {"knn"}
    assert [a["predictions"][0]["label"] for a in answers] == [p.label for p in expected]
    assert [a["unknown"] for a in answers] == [p.unknown for p in expected]


def test_serving_needs_no_training_code(finetuned_run: Path, test_images: list[Path]) -> None:
    """A fresh process that serves a bundle and answers a request imports no training-only library."""
    import subprocess
    import sys

    code = f"""
import sys
from fastapi.testclient import TestClient
from visiontune.serve import ServeConfig, create_app
with TestClient(create_app(ServeConfig(model={str(finetuned_run)!r})), base_url={BASE_URL!r}) as client:
    assert client.post("/predict", content=open({str(test_images[0])!r}, "rb").read()).status_code == 200
heavy = ("accelerate", "sklearn", "optuna", "matplotlib", "onnx", "visiontune.training", "visiontune.features")
print(sorted(name for name in sys.modules if any(name == h or name.startswith(h + ".") for h in heavy)))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
