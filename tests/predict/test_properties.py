"""Property: `predict` on any bytes answers each input, never raises, and never reports a non-finite number.

Hypothesis draws files of random bytes, real images re-encoded in every supported format and then
cut short or with bytes flipped, and image signatures followed by noise. In process, every input
gets a Prediction (an error, or top-k probabilities that are finite and sum to at most 1) that
encodes as strict JSON; through the CLI, the exit code is 0 or 3, nothing is printed as a
traceback, and nothing is written (the JSON goes to stdout) or changed among the inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import visiontune
from tests.cli.test_cli import visiontune as cli
from visiontune.predict import Prediction, Predictor

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a", b"BM", b"II*\x00")


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(("noise", "signature", "image", "cut", "flipped")))
    if kind == "noise":
        return draw(st.binary(max_size=256))
    if kind == "signature":
        return draw(st.sampled_from(SIGNATURES)) + draw(st.binary(max_size=128))
    side = draw(st.integers(1, 40))
    pixels = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=draw(st.sampled_from(FORMATS)))
    data = bytearray(buffer.getvalue())
    if kind == "cut":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "flipped":
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[position] ^= 0xFF
    return bytes(data)


def _finite_answer(prediction: Prediction) -> None:
    json.dumps(prediction.to_dict(), allow_nan=False)  # strict JSON: no NaN or Infinity anywhere
    if prediction.error is not None:
        assert prediction.predictions == []
        return
    probabilities = [p["probability"] for p in prediction.predictions]
    assert probabilities and all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probabilities)
    assert sum(probabilities) <= 1.0 + 1e-5
    assert prediction.score is None or math.isfinite(prediction.score)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(image_bytes(), min_size=1, max_size=6))
def test_every_input_gets_a_finite_answer_or_an_error(finetuned_run: Path, blobs: list[bytes]) -> None:
    predictor = _predictor(finetuned_run)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, blob in enumerate(blobs):
            paths.append(Path(tmp) / f"input{i}.img")
            paths[-1].write_bytes(blob)
        predictions = predictor.predict(paths, topk=3)
    assert [p.path for p in predictions] == [str(p) for p in paths]  # one answer per input, in order
    for prediction in predictions:
        _finite_answer(prediction)


_LOADED: dict[Path, Predictor] = {}


def _predictor(run: Path) -> Predictor:
    if run not in _LOADED:
        _LOADED[run] = visiontune.load(run, device="cpu")
    return _LOADED[run]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_cli_on_a_folder_of_hostile_files_exits_0_or_3_and_writes_nothing(
    finetuned_run: Path, trained_data: Path, tmp_path: Path, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    folder = tmp_path / "inputs"
    folder.mkdir()
    real = sorted((trained_data / "test").rglob("*.png"))[:2]
    for i, source in enumerate(real):
        (folder / f"real{i}.png").write_bytes(source.read_bytes())
    for i in range(4):
        data = bytearray(real[i % 2].read_bytes())
        cut = data[: int(rng.integers(0, len(data)))] if i % 2 else data
        for position in rng.integers(0, len(cut), 4) if cut else []:
            cut[position] ^= 0xFF
        (folder / f"hostile{i}.png").write_bytes(bytes(cut))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    work = tmp_path / "work"
    work.mkdir()
    proc = cli("predict", str(finetuned_run), str(folder), "--format", "json", cwd=work)
    assert proc.returncode in (0, 3) and "Traceback" not in proc.stderr, proc.stderr
    answers = json.loads(proc.stdout, parse_constant=lambda name: pytest.fail(f"{name} in predict's JSON"))
    assert len(answers) == 6 and all(a["error"] or a["predictions"] for a in answers)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()} == before
    assert list(work.iterdir()) == []  # JSON goes to stdout: nothing written anywhere
