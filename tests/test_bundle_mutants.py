"""The bundle: what the first tests left open (found by `make mutation`, see docs/mutation.md).

Everything bundle.json holds comes back on load, the k-NN bank travels with it, a save replaces a
bundle whole and leaves nothing behind, and every way a path can miss a bundle is a one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits

from tests.test_bundle import CLASSES, edit_meta, tiny_bundle
from visiontune.bundle import (
    META_FILE,
    WEIGHTS_FILE,
    BundleMeta,
    load_bundle,
    read_meta,
    resolve_bundle_path,
    save_bundle,
)
from visiontune.calibration import Calibration
from visiontune.detector import fit_knn
from visiontune.errors import BundleError
from visiontune.models import create_classifier


def _error(path: Path) -> str:
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    return str(caught.value)


def test_everything_in_bundle_json_comes_back(tmp_path: Path) -> None:
    model = create_classifier("small_cnn", 3, pretrained=False, image_size=28)
    digits = torch.tensor(load_digits().data[:60], dtype=torch.float32)
    calibration = Calibration(temperature=1.5, thresholds={"msp": 0.4}).with_detector(
        fit_knn(digits[:40], k=3), digits[40:]
    )
    meta = BundleMeta(
        model.arch,
        list(CLASSES),
        model.preprocessing,
        metrics={"valid_accuracy": 0.9},
        calibration=calibration,
        training={"epochs": 2},
        versions={"torch": torch.__version__},
    )
    bundle = save_bundle(tmp_path / "runs" / "a" / "model", model, meta)  # parents are created
    stored = json.loads((bundle / META_FILE).read_text())
    assert stored["format"] == "visiontune.bundle/1" and stored["created"] == meta.created
    loaded_model, loaded = load_bundle(bundle)
    assert not loaded_model.training  # ready to predict
    assert (loaded.arch, loaded.classes, loaded.metrics, loaded.training, loaded.versions, loaded.created) == (
        meta.arch,
        meta.classes,
        meta.metrics,
        meta.training,
        meta.versions,
        meta.created,
    )
    assert loaded.preprocessing == meta.preprocessing
    assert loaded.calibration.temperature == 1.5 and loaded.calibration.threshold("msp") == 0.4
    assert loaded.calibration.score == "knn" and loaded.calibration.detector is not None
    embeddings = digits[40:]
    assert torch.allclose(
        loaded.calibration.detector.scores(embeddings), calibration.detector.scores(embeddings), atol=1e-3
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded_model.state_dict()[name], tensor)


def test_a_save_replaces_the_old_bundle_whole_and_leaves_nothing_behind(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "model")
    (bundle / "stale.txt").write_text("from the old bundle")
    torch.manual_seed(1)
    other = create_classifier("small_cnn", 2, pretrained=False, image_size=28)
    save_bundle(bundle, other, BundleMeta(other.arch, ["a", "b"], other.preprocessing))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or .old folder left
    assert sorted(p.name for p in bundle.iterdir()) == [META_FILE, WEIGHTS_FILE]
    assert load_bundle(bundle)[1].classes == ["a", "b"]


def test_a_bundle_is_found_from_its_json_its_folder_or_its_run(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "run" / "model")
    assert resolve_bundle_path(bundle / META_FILE) == bundle
    assert resolve_bundle_path(bundle) == bundle
    assert resolve_bundle_path(tmp_path / "run") == bundle
    assert read_meta(tmp_path / "run").classes == CLASSES


def test_paths_that_are_no_bundle_are_one_line_errors(tmp_path: Path) -> None:
    assert _error(tmp_path / "nope") == f"{tmp_path / 'nope'}: no such bundle or run folder"
    assert _error(tmp_path) == (
        f"{tmp_path}: not a model bundle (no bundle.json); give a run folder or its model/ folder"
    )
    bundle = tiny_bundle(tmp_path / "model")
    (bundle / META_FILE).write_text("{not json")
    assert _error(bundle).startswith(f"{bundle / META_FILE}: unreadable bundle metadata (")


def test_bundle_json_errors_say_what_is_wrong(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "model")
    edit_meta(bundle, {"format": "visiontune.bundle/0"})
    assert _error(bundle) == f"{bundle}: bundle format 'visiontune.bundle/0' is not 'visiontune.bundle/1'; re-export it"
    edit_meta(bundle, {"format": "visiontune.bundle/1", "arch": None})
    assert _error(bundle) == f"{bundle / META_FILE}: incomplete bundle metadata (no 'arch'); re-export it"
    bundle = tiny_bundle(tmp_path / "model")
    edit_meta(bundle, {"classes": ["a", "", "c"]})
    assert "`classes` must be a list of class names" in _error(bundle)
    edit_meta(bundle, {"classes": []})
    assert "`classes` must be a list of class names" in _error(bundle)
    edit_meta(bundle, {"classes": ["b", "a", "b", "a", "c"]})
    assert _error(bundle).endswith("`classes` names a class twice: a, b; re-export or retrain")
    edit_meta(bundle, {"classes": list(CLASSES), "weights": "abc"})
    assert "`weights.sha256` must be a sha256 hex digest. Received: 'abc'" in _error(bundle)


def test_weights_that_are_missing_or_do_not_fit_are_one_line_errors(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "model")
    arch = json.loads((bundle / META_FILE).read_text())["arch"]
    edit_meta(bundle, {"arch": {**arch, "num_classes": 5}})
    text = _error(bundle)
    assert text.startswith(f"{bundle}: weights do not fit the architecture in bundle.json (") and "\n" not in text
    (bundle / WEIGHTS_FILE).unlink()
    edit_meta(bundle, {"arch": arch, "weights": None})
    assert _error(bundle).startswith(f"{bundle / WEIGHTS_FILE}: unreadable weights (")


def test_weights_are_loaded_strictly(tmp_path: Path) -> None:
    """A weights file missing a tensor must not load with that layer left at random values."""
    bundle = tiny_bundle(tmp_path / "model")
    state = load_file(str(bundle / WEIGHTS_FILE))
    dropped = sorted(state)[-1]
    save_file({k: v for k, v in state.items() if k != dropped}, str(bundle / WEIGHTS_FILE))
    edit_meta(bundle, {"weights": None})  # as an older bundle, so the checksum does not catch it first
    text = _error(bundle)
    assert text.startswith(f"{bundle}: weights do not fit the architecture in bundle.json (") and dropped in text
