"""Which vectors the k-NN unknown score reads: every stage for fine-tuned bundles, the pooled one for older bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

import visiontune
from visiontune.detector import fit_knn
from visiontune.embedding import logits_and_embeddings
from visiontune.models.heads import pool_features


def _paths(data: Path, split: str) -> list[Path]:
    return sorted((data / split).rglob("*.png"))


def _outputs(predictor: visiontune.Predictor, paths: list[Path], forward) -> torch.Tensor:
    runner = predictor.runner
    return runner.outputs(runner.loader(predictor.dataset(paths)), forward=forward).outputs


def test_fine_tuned_bundles_read_every_stage_from_the_one_forward_pass(finetuned_run: Path, trained_data: Path) -> None:
    predictor = visiontune.load(finetuned_run, device="cpu")
    model, k = predictor.model, predictor.num_classes
    assert predictor.calibration.detector.embedding == "stages"  # what training fits now for a fine-tuned model
    images = predictor.runner.images(
        next(iter(predictor.runner.loader(predictor.dataset(_paths(trained_data, "test"))))).pixels
    )
    with torch.inference_mode():
        both = logits_and_embeddings(model, "stages")(images)
        pooled = logits_and_embeddings(model, "pooled")(images)[:, k:]
        final, stages = model.backbone.forward_intermediates(images)  # timm's own stage outputs, computed apart
        plain = model(images)
    assert torch.allclose(both[:, :k], plain, atol=1e-5)  # the logits are the plain forward's
    parts = [s.mean(dim=(2, 3)) for s in stages] + [pool_features(final, model.head.pool)]
    assert torch.allclose(both[:, k:], torch.cat([F.normalize(p, dim=1) for p in parts], dim=1), atol=1e-5)
    assert torch.allclose(pooled, parts[-1], atol=1e-5)  # "pooled": the final vector alone, as before
    assert predictor.calibration.detector.dim == both.shape[1] - k > model.num_features


def test_a_bundle_with_a_pooled_bank_loads_and_gives_the_same_verdicts(
    finetuned_run: Path, trained_data: Path, tmp_path: Path
) -> None:
    """A bundle as the release before "stages" wrote it: a bank of final pooled embeddings, no layout named."""
    predictor = visiontune.load(finetuned_run, device="cpu")
    model = predictor.model

    def pooled(paths: list[Path]) -> torch.Tensor:  # the previous release's embedding, written out here
        return _outputs(predictor, paths, lambda x: pool_features(model.forward_features(x), model.head.pool).float())

    train = pooled(_paths(trained_data, "train")[::3])  # 40 images: a bank of 20, 20 for the threshold
    bank = fit_knn(train[:20], k=10)
    calibration = predictor.calibration.with_detector(bank, train[20:])
    old = shutil.copytree(finetuned_run / "model", tmp_path / "model")
    bank.save(old)
    meta = json.loads((old / "bundle.json").read_text())
    meta["calibration"] = calibration.to_dict()
    assert meta["calibration"]["unknown"]["detector"].pop("embedding") == "pooled"
    (old / "bundle.json").write_text(json.dumps(meta))

    loaded = visiontune.load(old, device="cpu")
    assert loaded.calibration.detector.embedding == "pooled" and loaded.calibration.detector.dim == model.num_features
    test = _paths(trained_data, "test")
    expected = bank.scores(pooled(test))
    got = loaded.predict(test)
    assert {p.score_name for p in got} == {"knn"}
    assert [p.score for p in got] == pytest.approx(expected.tolist(), abs=1e-4)
    assert [p.unknown for p in got] == (expected < calibration.threshold("knn")).tolist()


def test_stages_tell_digits_from_clothes_better_than_max_softmax(
    finetuned_run: Path, trained_data: Path, tmp_path: Path
) -> None:
    """Real out-of-distribution images (scikit-learn's handwritten digits) against the fixture's test images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index in range(30):
        pixels = (digits.images[index] * (255 / 16)).round().astype(np.uint8)
        Image.fromarray(pixels).resize((28, 28), Image.BILINEAR).save(tmp_path / f"digit{index:02d}.png")
    predictor = visiontune.load(finetuned_run, device="cpu")
    known, unknown = predictor.predict(_paths(trained_data, "test")), predictor.predict(sorted(tmp_path.glob("*.png")))
    labels = [1] * len(known) + [0] * len(unknown)

    def auroc(values: list[float]) -> float:
        return float(roc_auc_score(labels, values))

    knn = auroc([p.score for p in known + unknown])
    msp = auroc([p.probability for p in known + unknown])
    print(f"AUROC knn (stages) {knn:.3f}, msp {msp:.3f}")
    assert knn > msp and knn >= 0.9
