"""Property: whatever JSON or bytes reach /predict and /predict/batch, the answer is never a 5xx,
every 4xx is JSON with an "error", and no 200 carries a NaN or an infinity."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.test_fuzz import real_png
from visiontune.serve.uploads import SIGNATURES

PATHS = st.sampled_from(["/predict", "/predict/batch"])
PNG = real_png(16)

# scalars include NaN, infinities and huge integers: all legal for Python's json
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
# a known image signature then noise, a real PNG with a few bytes overwritten, or plain noise
image_like = st.one_of(
    st.tuples(st.sampled_from([magic for _, magic in SIGNATURES]), st.binary(max_size=300)).map(b"".join),
    st.tuples(st.integers(0, len(PNG) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda cut: PNG[: cut[0]] + cut[1] + PNG[cut[0] + len(cut[1]) :]
    ),
    st.binary(max_size=300),
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


json_bodies = st.one_of(
    json_values,
    st.builds(lambda value: {"image": value}, json_values),
    st.builds(lambda value: {"images": value}, json_values),
    st.builds(lambda data: {"image": _b64(data)}, image_like),
    st.builds(lambda items: {"images": [_b64(d) for d in items]}, st.lists(image_like, max_size=3)),
)
# what a generated Python value never becomes: nesting deeper than the parser recurses, numbers past int()'s limit
hostile_json = st.one_of(
    st.integers(1, 6000).map(lambda depth: '{"image": ' + "[" * depth + "]" * depth + "}"),
    st.integers(1, 6000).map(lambda depth: '{"images": ' + '{"a": ' * depth + "1" + "}" * depth + "}"),
    st.integers(1, 6000).map(lambda digits: '{"image": -' + "7" * digits + "}"),
)
json_texts = json_bodies.map(json.dumps) | hostile_json
PROPERTY = settings(
    max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"a 200 answer holds {name}")


def _check(response: Any) -> None:
    """The property: < 500; 4xx -> {"error": str}; 200 -> strict JSON (no NaN / Infinity), finite probabilities."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str) and response.json()["error"]
        return
    body = json.loads(response.text, parse_constant=_refuse_constant)
    for answer in body if isinstance(body, list) else [body]:
        assert all(0.0 <= p["probability"] <= 1.0 for p in answer["predictions"]), answer


@PROPERTY
@given(path=PATHS, text=json_texts)
def test_any_json_body_gets_a_json_answer(client: TestClient, path: str, text: str) -> None:
    _check(client.post(path, content=text.encode(), headers={"Content-Type": "application/json"}))


@PROPERTY
@given(path=PATHS, data=image_like, how=st.sampled_from(["raw", "multipart", "json"]))
def test_any_bytes_get_a_json_answer(client: TestClient, path: str, data: bytes, how: str) -> None:
    field = "files" if path.endswith("batch") else "file"
    request: dict[str, Any] = {
        "raw": {"content": data, "headers": {"Content-Type": "application/octet-stream"}},
        "multipart": {"files": {field: ("x.jpg", data, "image/jpeg")}},
        "json": {"json": {"images": [_b64(data)]} if field == "files" else {"image": _b64(data)}},
    }[how]
    _check(client.post(path, **request))


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_the_property_holds_for_a_real_image(client: TestClient, path: str) -> None:
    """The check above passes a good answer: the property is not satisfied by refusing everything."""
    field = "files" if path.endswith("batch") else "file"
    response = client.post(path, files={field: ("a.png", PNG, "image/png")})
    assert response.status_code == 200
    _check(response)
