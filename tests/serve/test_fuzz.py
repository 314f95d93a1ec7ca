"""Malformed requests: every one gets a 4xx with a JSON error naming the problem, and the server keeps serving."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.serve.conftest import jpeg_bytes


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims width x height RGB pixels but whose data is a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(bytes(64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def real_png(size: int = 96) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _cases(test_image: Path) -> Iterator[tuple[str, dict[str, Any], tuple[int, ...], str]]:
    """(name, request keyword arguments, acceptable statuses, a fragment the error must contain)."""
    png, jpeg = real_png(), jpeg_bytes(test_image, size=128)
    rng = np.random.default_rng(1)

    def upload(name: str, data: bytes, kind: str = "image/jpeg", field: str = "file") -> dict[str, Any]:
        return {"files": {field: (name, data, kind)}}

    yield "empty body", {}, (422,), "empty request"
    yield "empty JSON body", {"content": b"", "headers": {"Content-Type": "application/json"}}, (422,), "empty"
    yield "0-byte file", upload("empty.jpg", b""), (422,), "0 bytes"
    for k, length in enumerate((1, 7, 100, 5000)):
        data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        yield f"random bytes {length}", upload(f"noise{k}.jpg", data), (422,), f"noise{k}.jpg"
        yield f"random raw body {length}", {"content": data}, (422,), "<body>"
    yield "PNG signature then noise", upload("a.png", png[:8] + bytes(range(256))), (422,), "a.png"
    yield "truncated PNG", upload("cut.png", png[: len(png) // 2], "image/png"), (422,), "truncated"
    yield "truncated JPEG", upload("cut.jpg", jpeg[: len(jpeg) // 2]), (422,), "truncated"
    yield "JPEG header only", upload("head.jpg", jpeg[:20]), (422,), "head.jpg"
    yield (
        "PNG claiming 100000 x 100000",
        upload("bomb.png", png_claiming(100_000, 100_000), "image/png"),
        (413,),
        ("pixels"),
    )
    yield "PNG claiming 0 x 0", upload("zero.png", png_claiming(0, 0), "image/png"), (422,), "zero.png"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    yield "SVG named .jpg", upload("drawing.jpg", svg), (422,), "SVG"
    yield "HTML named .jpg", upload("page.jpg", b"<!DOCTYPE html><html><body>hi</body></html>"), (422,), "HTML"
    yield "PDF named .png", upload("doc.png", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "image/png"), (422,), "PDF"
    yield "wrong field name", upload("a.png", png, "image/png", field="image"), (422,), "fields sent: image"
    yield "URL-encoded form", {"data": {"file": "not a file"}}, (422,), "no file in it"
    text_field = {"data": {"file": "not a file"}, "files": {"other": ("x.png", png, "image/png")}}
    yield "text in the multipart file field", text_field, (422,), "text, not a file"
    yield "JSON without image", {"json": {"img": "abc"}}, (422,), '"image"'
    yield "JSON image not base64", {"json": {"image": "***not base64***"}}, (422,), "base64"
    yield "JSON image of an HTML page", {"json": {"image": "PGh0bWw+PC9odG1sPg=="}}, (422,), "HTML"
    yield "JSON a list", {"json": [1, 2, 3]}, (422,), '"image"'
    yield "broken JSON", {"content": b'{"image": ', "headers": {"Content-Type": "application/json"}}, (422,), "JSON"
    bad_multipart = {"content": b"--x\r\nnonsense", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}
    yield "malformed multipart", bad_multipart, (422,), "no image in multipart field 'file'"
    no_boundary = {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}}
    yield "multipart without boundary", no_boundary, (400,), "Missing boundary"
    yield "topk not a number", {"params": {"topk": "many"}, **upload("a.png", png, "image/png")}, (422,), "topk"


def test_malformed_inputs_get_4xx_and_the_server_keeps_serving(client: TestClient, test_images: list[Path]) -> None:
    good = {"file": ("good.png", test_images[0].read_bytes(), "image/png")}
    for name, request, statuses, fragment in _cases(test_images[0]):
        response = client.post("/predict", **request)
        assert response.status_code in statuses, f"{name}: {response.status_code} {response.text}"
        assert fragment in response.json()["error"], f"{name}: {response.json()}"
        assert client.get("/health").status_code == 200, name
    assert client.post("/predict", files=good).status_code == 200  # and still predicts


def test_bodies_over_the_limit_are_cut_off_declared_or_streamed(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_upload_mb=0.01)  # bodies of ~77 kB at most (base64 and form overhead included)
    big = bytes(200_000)
    declared = client.post("/predict", content=big, headers={"Content-Type": "image/png"})
    assert declared.status_code == 413 and "over the limit" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body has to be counted as it arrives
        for _ in range(20):
            yield bytes(10_000)

    streamed = client.post("/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert streamed.status_code == 413 and "over the limit" in streamed.json()["error"]
    too_many = client.post("/predict/batch", files=[("files", (f"{i}.png", real_png(8))) for i in range(40)])
    assert too_many.status_code == 400 and "Maximum number of files is 32" in too_many.json()["error"]
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_wrong_methods_and_routes_are_json_4xx(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 405 and "error" in client.get(path).json()
    assert client.post(path + "/nothing").status_code == 404
