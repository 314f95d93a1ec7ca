"""The bundle as loaded: damaged weights and a bundle.json that doesn't fit its weights are one-line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from visiontune.bundle import META_FILE, WEIGHTS_FILE, BundleMeta, load_bundle, save_bundle
from visiontune.errors import BundleError
from visiontune.models import create_classifier

CLASSES = ["t-shirt_top", "trouser", "sneaker"]


def tiny_bundle(path: Path) -> Path:
    """A random small_cnn (3 classes, 28 px) saved as a bundle: no training needed to test loading."""
    torch.manual_seed(0)
    model = create_classifier("small_cnn", len(CLASSES), pretrained=False, image_size=28)
    return save_bundle(path, model, BundleMeta(model.arch, list(CLASSES), model.preprocessing))


def edit_meta(bundle: Path, change: dict[str, Any]) -> None:
    meta = json.loads((bundle / META_FILE).read_text())
    for key, value in change.items():
        section, _, field = key.partition(".")
        if field:
            meta[section][field] = value
        elif value is None:
            meta.pop(section)
        else:
            meta[section] = value
    (bundle / META_FILE).write_text(json.dumps(meta))


def flip_bytes(bundle: Path) -> None:
    """Damage the tensors, not the header: safetensors still loads it, with nonsense (or NaN) weights."""
    weights = bundle / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    for offset in range(len(data) - 400, len(data) - 100, 4):
        data[offset + 3] = 0x7F  # the top byte of a float32: exponent all ones, a NaN or infinity
        data[offset + 2] |= 0x80
    weights.write_bytes(bytes(data))


def test_save_records_the_weights_checksum(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "model")
    meta = json.loads((bundle / META_FILE).read_text())
    digest = hashlib.sha256((bundle / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert meta["weights"] == {"file": WEIGHTS_FILE, "sha256": digest}
    _, loaded = load_bundle(bundle)
    assert loaded.classes == CLASSES and loaded.weights_sha256 == meta["weights"]["sha256"]


def test_flipped_bytes_in_the_weights_are_refused(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "model")
    flip_bytes(bundle)
    with pytest.raises(BundleError, match=r"weights do not match bundle\.json's checksum: the file is damaged"):
        load_bundle(bundle)


def test_a_bundle_without_a_checksum_still_loads(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "model")
    edit_meta(bundle, {"weights": None})  # as bundles of earlier releases
    assert load_bundle(bundle)[1].weights_sha256 is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"classes": CLASSES[:2]}, "2 classes for a model with 3 outputs"),
        ({"classes": [*CLASSES, "coat"]}, "4 classes for a model with 3 outputs"),
        ({"classes": "abc"}, "`classes` must be a list of class names"),
        ({"classes": ["a", "b", "a"]}, "names a class twice: a"),
        ({"classes": ["a", 2, "c"]}, "`classes` must be a list of class names"),
        ({"calibration": {"temperature": "nan"}}, "`temperature` must be a finite number"),
        ({"preprocessing.image_size": [100000, 100000]}, "`image_size` must be in [8, 4096]"),
        ({"preprocessing.std": [0.5, float("nan"), 0.5]}, "`mean` and `std` must be finite"),
        ({"weights": {"sha256": "abc"}}, "`weights.sha256` must be a sha256 hex digest"),
    ],
)
def test_bundle_json_that_does_not_fit_its_weights_is_refused(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    bundle = tiny_bundle(tmp_path / "model")
    edit_meta(bundle, change)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle)
    text = str(caught.value)
    assert message in text and str(bundle) in text and "\n" not in text
    assert "incomplete" not in text  # a wrong value is not a missing one
