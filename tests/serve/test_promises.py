"""What the README promises of `serve` besides the API: loopback unless --host, the key from VISIONTUNE_API_KEY,
and uploads of every format it names (JPEG, PNG, WebP, GIF, BMP, TIFF) answered as the same image in PNG."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import visiontune.predict
import visiontune.serve
from visiontune.cli.main import app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch, served_predictor: Any) -> Callable[..., dict[str, Any]]:
    """launched(*serve args, env=...) -> what `visiontune serve` hands uvicorn and the app, without serving."""

    def launch(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        monkeypatch.setattr(visiontune.predict, "load", lambda *a, **k: served_predictor)  # the shared model
        create_app = visiontune.serve.create_app

        def recorded(config: Any, **kwargs: Any) -> Any:
            seen["config"] = config
            return create_app(config, **kwargs)

        monkeypatch.setattr(visiontune.serve, "create_app", recorded)
        monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
        result = CliRunner().invoke(app, ["serve", "model-folder", "--port", str(_free_port()), *args], env=env)
        assert result.exit_code == 0, result.output
        return {**seen, "output": result.output}

    return launch


def test_serve_listens_on_loopback_unless_host_says_otherwise(
    launched: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VISIONTUNE_API_KEY", raising=False)
    assert launched()["host"] == "127.0.0.1"
    everywhere = launched("--host", "0.0.0.0")
    assert everywhere["host"] == "0.0.0.0" and "with no API key" in everywhere["output"]


def test_the_api_key_comes_from_the_environment(
    launched: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch, test_images: list[Path]
) -> None:
    monkeypatch.setenv("VISIONTUNE_API_KEY", "s3cret-from-env")
    seen = launched()
    assert seen["config"].api_key == "s3cret-from-env" and "API key required" in seen["output"]
    with TestClient(visiontune.serve.create_app(seen["config"], predictor=visiontune.predict.load("x")),
                    base_url="http://localhost") as client:  # fmt: skip
        upload = {"file": ("a.png", test_images[0].read_bytes(), "image/png")}
        assert client.post("/predict", files=upload).status_code == 401
        assert client.post("/predict", files=upload, headers={"X-API-Key": "s3cret-from-env"}).status_code == 200
    assert launched("--api-key", "typed")["config"].api_key == "typed"  # an option typed wins


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"WEBP": {"lossless": True}, "TIFF": {"compression": "tiff_lzw"}}.get(fmt, {})
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["WEBP", "GIF", "BMP", "TIFF"])
def test_uploads_in_every_named_format_get_the_answer_of_the_same_png(
    client: TestClient, test_images: list[Path], fmt: str
) -> None:
    """Lossless encodings of one real (grey) image: the same pixels, so the same probabilities as its PNG."""
    path = test_images[5]
    image = Image.open(path)
    data = _encode(image, fmt)
    assert Image.open(io.BytesIO(data)).format == fmt and data[:4] != path.read_bytes()[:4]
    reference = client.post("/predict", files={"file": ("a.png", path.read_bytes(), "image/png")}).json()
    answer = client.post("/predict", files={"file": (f"a.{fmt.lower()}", data, f"image/{fmt.lower()}")})
    assert answer.status_code == 200, answer.text
    ours, theirs = answer.json()["predictions"], reference["predictions"]
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    assert [p["probability"] for p in ours] == pytest.approx([p["probability"] for p in theirs], abs=1e-6)
    raw = client.post("/predict", content=data, headers={"Content-Type": "application/octet-stream"})
    assert raw.status_code == 200 and raw.json()["predictions"] == answer.json()["predictions"]
