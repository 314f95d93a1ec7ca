"""The Predictor: the same answers as training's evaluation, for every kind of input, with errors per file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import visiontune
from visiontune.bundle import load_bundle
from visiontune.data.images import open_image
from visiontune.data.transforms import build_transform
from visiontune.errors import BundleError, ConfigError, ImageError
from visiontune.predict import Predictor, tta_views

IMAGENET_CATS = {"tabby, tabby cat", "tiger cat", "Persian cat", "Siamese cat, Siamese", "Egyptian cat"}  # 281-285


def _test_images(data: Path) -> list[tuple[Path, str]]:
    return [(p, p.parent.name) for p in sorted((data / "test").rglob("*.png"))]


@pytest.fixture(scope="module")
def imagenet() -> Predictor:
    return visiontune.load("efficientnet_lite0", device="cpu")


def test_pretrained_backbone_knows_a_cat_and_an_espresso(imagenet: Predictor, tmp_path: Path) -> None:
    Image.fromarray(skdata.chelsea()).save(tmp_path / "chelsea.jpg", quality=92)
    Image.fromarray(skdata.coffee()).save(tmp_path / "coffee.jpg", quality=92)
    cat, coffee = imagenet.predict([tmp_path / "chelsea.jpg", tmp_path / "coffee.jpg"], topk=3)
    assert imagenet.classes.index(cat.label) in range(281, 286) and cat.label in IMAGENET_CATS
    assert coffee.label in {"espresso", "cup"}
    assert not cat.unknown  # never calibrated: no threshold, so never "unknown"
    assert len(cat.predictions) == 3 and cat.predictions[0]["probability"] >= cat.predictions[1]["probability"]


@pytest.mark.parametrize("fixture", ["finetuned_run", "features_run"])
def test_bundle_predictions_match_training_evaluation(
    fixture: str, request: pytest.FixtureRequest, trained_data: Path
) -> None:
    """Both kinds of bundle, loaded from their run folder, score the test split exactly as training did."""
    run: Path = request.getfixturevalue(fixture)
    predictor = visiontune.load(run, device="cpu")
    images = _test_images(trained_data)
    predictions = predictor.predict([p for p, _ in images])
    accuracy = np.mean([pred.label == label for pred, (_, label) in zip(predictions, images, strict=True)])
    recorded = json.loads((run / "results.json").read_text())["metrics"]["test_accuracy"]
    assert accuracy == pytest.approx(recorded, abs=1e-6)
    # and the logits are training's evaluation pipeline's (per-image transform, fp32)
    model, meta = load_bundle(run)
    transform = build_transform(meta.preprocessing)
    batch = torch.stack([transform(open_image(p)) for p, _ in images[:8]])
    with torch.inference_mode():
        expected = (model(batch) / meta.calibration.temperature).softmax(1)
    got = predictor.predict_proba([p for p, _ in images[:8]])
    assert np.abs(got - expected.numpy()).max() < 1e-4


def test_every_kind_of_input_gives_the_same_answer(finetuned_run: Path, trained_data: Path) -> None:
    predictor = visiontune.load(finetuned_run, device="cpu")
    path = _test_images(trained_data)[0][0]
    pil = Image.open(path)
    gray = np.array(pil)  # (28, 28) uint8, writable
    inputs = [
        path,
        str(path),
        pil,
        gray,
        np.stack([gray] * 3, -1),
        torch.from_numpy(gray)[None],
        torch.from_numpy(gray)[None] / 255.0,
    ]
    probs = predictor.predict_proba(inputs)
    assert np.abs(probs - probs[0]).max() < 1e-5
    paths = [p.path for p in predictor.predict(inputs)]
    assert paths[:2] == [str(path), str(path)] and paths[2:] == [None] * 5
    assert probs.sum(1) == pytest.approx(np.ones(len(inputs)), abs=1e-5)


def test_bad_files_get_error_rows_and_the_rest_is_predicted(
    finetuned_run: Path, trained_data: Path, tmp_path: Path
) -> None:
    good = _test_images(trained_data)[0][0]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    inputs = [good, tmp_path / "missing.png", truncated, text, tmp_path, good]
    predictions = visiontune.load(finetuned_run, device="cpu").predict(inputs, batch_size=2)
    assert [p.error is None for p in predictions] == [True, False, False, False, False, True]
    assert predictions[1].error == "no such file" and "folder" in predictions[4].error
    assert predictions[0].label == predictions[5].label and predictions[2].predictions == []
    with pytest.raises(ImageError, match=r"missing\.png"):
        visiontune.load(finetuned_run, device="cpu").predict_proba([good, tmp_path / "missing.png"])


def test_unknown_follows_the_calibrated_threshold(finetuned_run: Path, trained_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finetuned_run / "model", run / "model")
    meta = json.loads((run / "model" / "bundle.json").read_text())
    images = [p for p, _ in _test_images(trained_data)]
    scores = [p.score for p in visiontune.load(run, device="cpu").predict(images, unknown_score="msp")]
    threshold = float(np.median(scores))
    meta["calibration"]["unknown"]["thresholds"]["msp"] = threshold
    (run / "model" / "bundle.json").write_text(json.dumps(meta))
    predictor = visiontune.load(run, device="cpu")
    flagged = [p.unknown for p in predictor.predict(images, unknown_score="msp")]
    assert flagged == [s < threshold for s in scores] and 0 < sum(flagged) < len(images)
    assert not any(p.unknown for p in predictor.predict(images, unknown=False))
    assert all(p.predictions for p in predictor.predict(images))  # the best guess stays alongside
    energy = predictor.predict(images, unknown_score="energy")
    scores = [p.score for p in energy]
    assert None not in scores and max(scores) > 1.0  # a logsumexp, unbounded: not a probability
    with pytest.raises(ConfigError, match="'msp', 'energy'"):
        predictor.predict(images, unknown_score="entropy")


def test_tta_averages_mirror_and_zoom_views(finetuned_run: Path, trained_data: Path) -> None:
    batch = torch.rand(2, 3, 64, 64)
    views = tta_views(batch)
    assert len(views) == 4 and torch.equal(views[1], batch.flip(-1)) and torch.equal(views[3], views[2].flip(-1))
    assert views[2].shape == batch.shape and not torch.equal(views[2], batch)
    predictor = visiontune.load(finetuned_run, device="cpu")
    images = [p for p, _ in _test_images(trained_data)[:6]]
    plain, averaged = predictor.predict_proba(images), predictor.predict_proba(images, tta=True)
    assert averaged.shape == plain.shape and not np.allclose(averaged, plain)
    assert averaged.sum(1) == pytest.approx(np.ones(6), abs=1e-5)
    # the average of the four views' calibrated probabilities, each view scored on its own
    model, meta = load_bundle(finetuned_run)
    transform = build_transform(meta.preprocessing)
    batch = torch.stack([transform(open_image(p)) for p in images])
    with torch.inference_mode():
        logits = torch.stack([model(v) / meta.calibration.temperature for v in tta_views(batch)])
    per_view = logits.softmax(2)
    # views that differ (in logits: a confident model's probabilities of both round to 1)
    assert not np.allclose(logits[0].numpy(), logits[2].numpy(), atol=1e-2)
    np.testing.assert_allclose(averaged, per_view.mean(0).numpy(), atol=1e-4)
    top = predictor.predict(images, tta=True, topk=1)  # predict (which also embeds for the k-NN score) agrees
    assert [p.probability for p in top] == pytest.approx(averaged.max(1).tolist(), abs=1e-4)


def test_unknown_model_names_and_folders_are_clear(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle or run folder"):
        visiontune.load("no_such_backbone_xyz")
    with pytest.raises(BundleError, match="not a model bundle"):
        visiontune.load(tmp_path)
    with pytest.raises(BundleError, match="no such bundle"):
        visiontune.load(tmp_path / "missing" / "run")


def nan_predictor() -> Predictor:
    """A small_cnn whose last layer holds a NaN, as flipped bits in a bundle without a checksum would."""
    from visiontune.models import create_classifier

    model = create_classifier("small_cnn", 3, pretrained=False, image_size=28)
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if name.startswith("head"))[0] = float("nan")
    return Predictor(model, ["a", "b", "c"], model.preprocessing, device="cpu")


def test_a_non_finite_output_is_an_error_for_that_input_never_a_nan_probability(class_folder: Path) -> None:
    from visiontune.errors import ModelError

    images = sorted(class_folder.rglob("*.png"))[:3]
    predictions = nan_predictor().predict(images)
    assert [p.error for p in predictions] == [predictions[0].error] * 3 and "not a number" in predictions[0].error
    json.dumps([p.to_dict() for p in predictions], allow_nan=False)  # strict JSON, for every reader
    with pytest.raises(ModelError, match="not a number"):
        nan_predictor().predict_proba(images)
