"""What the server refuses so that nothing a client sends is lost or silently wrong (issue 14, server part).

Hostile JSON, bodies over the request limit, more pixels at once than the pixel budget, foreign
Host headers and cross-origin posts: each a JSON 4xx (or a 503 to retry), never a 500.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.serve.test_fuzz import real_png
from visiontune.errors import ConfigError
from visiontune.serve import ServeConfig
from visiontune.serve import app as serve_app

JSON = {"Content-Type": "application/json"}


def _file(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (path.name, path.read_bytes(), "image/png")}


@pytest.mark.parametrize(
    "body",
    [
        b'{"image": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"images": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}",
        b'{"image": ' + b"9" * 5000 + b"}",
        b"-" + b"1" * 5000,
    ],
    ids=["lists 5000 deep", "objects 3000 deep", "5000-digit integer", "bare 5000-digit integer"],
)
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_hostile_json_is_a_json_4xx(client: TestClient, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert "JSON" in response.json()["error"]
    assert client.get("/health").status_code == 200


def test_batch_bodies_are_bounded_as_a_whole(make_client: Callable[..., TestClient]) -> None:
    """Each image is far under the upload limit; together they are over the request limit: 413 before parsing."""
    assert ServeConfig().body_limit("/predict/batch") <= 64_000_000  # it was 429 MB: 32 uploads of 10 MB as base64
    client = make_client(max_request_mb=0.1)
    image = base64.b64encode(real_png(150)).decode()  # ~90 kB of base64
    assert len(image) < 0.1e6 < 2 * len(image)
    declared = client.post("/predict/batch", json={"images": [image, image]})
    assert declared.status_code == 413 and "over the limit" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"images": ["' + image.encode() + b'", "'
        yield image.encode() + b'"]}'

    streamed = client.post("/predict/batch", content=chunks(), headers=JSON)
    assert streamed.status_code == 413 and "over the limit" in streamed.json()["error"]
    assert client.post("/predict/batch", json={"images": [image]}).status_code == 200


def test_json_is_parsed_and_base64_decoded_off_the_event_loop(
    client: TestClient, test_images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large JSON batch must not stall every other request while it is parsed."""
    on_loop: list[bool] = []
    parse = serve_app._from_json

    def recorded(*args: object, **kwargs: object) -> object:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # a worker thread has no running loop
            on_loop.append(False)
        return parse(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(serve_app, "_from_json", recorded)
    encoded = base64.b64encode(test_images[0].read_bytes()).decode()
    assert client.post("/predict/batch", json={"images": [encoded]}).status_code == 200
    assert client.post("/predict", json={"image": encoded}).status_code == 200
    assert on_loop == [False, False]


def test_pixels_decoded_at_once_are_bounded_across_requests(
    make_client: Callable[..., TestClient], test_images: list[Path]
) -> None:
    """The test images are 28 x 28 = 784 pixels; with 500 of a 1,000-pixel budget taken, one must wait, then 503."""
    client = make_client(max_pixels=1000, pixel_budget=1000, busy_wait_s=0.2)
    budget = client.app.state.service.budget  # type: ignore[attr-defined]
    client.portal.call(budget.acquire, 500)  # another request decoding 500 pixels
    busy = client.post("/predict", files=_file(test_images[0]))
    assert busy.status_code == 503 and "pixel budget" in busy.json()["error"]
    assert int(busy.headers["retry-after"]) >= 1
    client.portal.call(budget.release, 500)
    assert client.post("/predict", files=_file(test_images[0])).status_code == 200
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in test_images[:4]]
    batch = client.post("/predict/batch", files=files)  # 4 x 784 pixels: decoded one at a time, all answered
    assert batch.status_code == 200 and all(a["error"] is None for a in batch.json())
    assert budget.in_use == 0
    with pytest.raises(ConfigError, match="pixel_budget"):
        ServeConfig(max_pixels=1000, pixel_budget=999)


def test_only_the_hosts_it_was_started_for_are_answered(make_client: Callable[..., TestClient]) -> None:
    """DNS rebinding: a page on evil.example, re-pointed at 127.0.0.1, sends Host: evil.example."""
    client = make_client()
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
        assert client.get("/info", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost@evil.example"):
        refused = client.get("/info", headers={"Host": host})
        assert refused.status_code == 400 and "--allowed-host" in refused.json()["error"], host
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
    named = make_client(allowed_hosts=("localhost", "models.lan"))
    assert named.get("/info", headers={"Host": "models.lan:8000"}).status_code == 200
    assert make_client(allowed_hosts=("*",)).get("/info", headers={"Host": "evil.example"}).status_code == 200


def test_cross_origin_posts_are_refused_unless_allowed(
    make_client: Callable[..., TestClient], test_images: list[Path]
) -> None:
    client = make_client()
    same = client.post("/predict", files=_file(test_images[0]), headers={"Origin": "http://localhost:8000"})
    assert same.status_code == 200  # the bundled page: same origin
    for origin in ("http://evil.example", "null", "http://localhost.evil.example"):
        refused = client.post("/predict", files=_file(test_images[0]), headers={"Origin": origin})
        assert refused.status_code == 403 and "--allow-origin" in refused.json()["error"], origin
    form = client.post("/predict", data={"file": "x"}, headers={"Origin": "http://evil.example"})
    assert form.status_code == 403  # a plain HTML form post from another site is never processed
    assert client.get("/info", headers={"Origin": "http://evil.example"}).status_code == 200
    allowed = make_client(allow_origins=("https://app.example",))
    ok = allowed.post("/predict", files=_file(test_images[0]), headers={"Origin": "https://app.example"})
    assert ok.status_code == 200
    other = allowed.post("/predict", files=_file(test_images[0]), headers={"Origin": "http://app.example"})
    assert other.status_code == 403  # the scheme is part of the origin


def test_allowed_hosts_are_loopback_plus_a_specific_bind_address() -> None:
    from visiontune.serve.guards import allowed_hosts

    loopback = ("localhost", "127.0.0.1", "[::1]")
    assert allowed_hosts("127.0.0.1") == loopback
    assert allowed_hosts("0.0.0.0") == loopback  # every interface: no single name to add
    assert allowed_hosts("::") == loopback
    assert allowed_hosts("192.168.1.20") == (*loopback, "192.168.1.20")
    assert allowed_hosts("fe80::1", ["models.lan"]) == (*loopback, "[fe80::1]", "models.lan")
    with pytest.raises(ConfigError, match="allow_origins"):
        ServeConfig(allow_origins=("app.example",))


def test_health_is_ok_only_when_a_prediction_works(test_images: list[Path]) -> None:
    from tests.predict.test_predictor import nan_predictor

    config = ServeConfig(model="broken")
    with TestClient(serve_app.create_app(config, predictor=nan_predictor()), base_url="http://localhost") as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failing"
        assert "not a number" in health.json()["error"]
        answer = client.post("/predict", files=_file(test_images[0]))
        assert answer.status_code == 500 and "not a number" in answer.json()["error"]  # JSON, never a null probability
        batch = client.post(
            "/predict/batch", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in test_images[:2]]
        )
        assert batch.status_code == 200 and all(item["error"] and not item["predictions"] for item in batch.json())
