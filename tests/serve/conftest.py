"""The service around the shared fine-tuned run: one loaded Predictor per session, an app per test."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from visiontune.predict import Predictor
from visiontune.serve import ServeConfig, create_app

BASE_URL = "http://localhost"  # a host the server allows by default (TestClient's own is "testserver")


@pytest.fixture(scope="session")
def served_predictor(finetuned_run: Path) -> Predictor:
    return Predictor.load(finetuned_run, device="cpu")


@pytest.fixture
def make_client(served_predictor: Predictor, finetuned_run: Path) -> Iterator[Callable[..., TestClient]]:
    """make_client(**ServeConfig fields) -> a started TestClient (lifespan run, batcher going)."""
    clients: list[TestClient] = []

    def make(**settings: object) -> TestClient:
        config = ServeConfig(model=str(finetuned_run), **settings)  # type: ignore[arg-type]
        client = TestClient(create_app(config, predictor=served_predictor), base_url=BASE_URL)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def test_images(trained_data: Path) -> list[Path]:
    return sorted((trained_data / "test").rglob("*.png"))


def jpeg_bytes(path: Path, *, size: int | None = None) -> bytes:
    """The image as a JPEG file's bytes, optionally scaled up to `size` x `size` (a bigger upload)."""
    image = Image.open(path).convert("RGB")
    if size is not None:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
