"""What the shared fine-tuned run (conftest `finetuned_run`: 3 real Fashion-MNIST classes, 40 training images each,
1 + 1 epochs at 64 px) promises beyond its files: it learnt, its temperature is the validation NLL's minimum, and
its `msp` unknown threshold keeps 95% of the correct validation answers (the README's default)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import visiontune
from visiontune.bundle import load_bundle
from visiontune.data.images import open_image
from visiontune.data.transforms import build_transform


def _valid(run: Path, data: Path) -> list[tuple[Path, str]]:
    with open(run / "splits.csv") as handle:
        return [(data / row["path"], row["label"]) for row in csv.DictReader(handle) if row["split"] == "valid"]


def test_fine_tuning_beats_chance_clearly(finetuned_run: Path) -> None:
    metrics = json.loads((finetuned_run / "results.json").read_text())["metrics"]
    assert metrics["test_accuracy"] >= 0.8 and metrics["valid_accuracy"] >= 0.8  # chance: 1 in 3
    assert metrics["test_loss"] < 0.8 * torch.log(torch.tensor(3.0)).item()  # below a uniform guess's loss
    # (that the bundle predicts these numbers: tests/predict/test_predictor.py)


def _valid_logits(run: Path, data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept model's logits on the run's validation images, through the evaluation transform, and targets."""
    model, meta = load_bundle(run)
    transform = build_transform(meta.preprocessing)
    valid = _valid(run, data)
    with torch.inference_mode():
        logits = model.eval()(torch.stack([transform(open_image(path)) for path, _ in valid]))
    return logits, torch.tensor([meta.classes.index(label) for _, label in valid])


@pytest.mark.parametrize("fixture", ["finetuned_run", "features_run"])
def test_the_temperature_minimises_the_validation_nll(
    fixture: str, request: pytest.FixtureRequest, trained_data: Path
) -> None:
    run: Path = request.getfixturevalue(fixture)
    logits, targets = _valid_logits(run, trained_data)
    calibration = json.loads((run / "model" / "bundle.json").read_text())["calibration"]
    t = calibration["temperature"]
    nll = {factor: float(F.cross_entropy(logits / (t * factor), targets)) for factor in (0.8, 1.0, 1.25)}
    assert nll[1.0] == pytest.approx(calibration["nll_after"], abs=1e-4)  # fitted on these very images
    assert calibration["nll_after"] <= calibration["nll_before"]
    if bool((logits.argmax(1) == targets).all()):
        assert t == 1.0  # no validation error: nothing to fit (a smaller T always looks better)
    else:
        assert nll[1.0] <= nll[0.8] and nll[1.0] <= nll[1.25]  # a minimum, not just any value in [0.05, 20]


def test_the_msp_threshold_keeps_95_percent_of_correct_validation_answers(
    finetuned_run: Path, trained_data: Path
) -> None:
    meta = json.loads((finetuned_run / "model" / "bundle.json").read_text())
    threshold = meta["calibration"]["unknown"]["thresholds"]["msp"]
    valid = _valid(finetuned_run, trained_data)
    answers = visiontune.load(finetuned_run, device="cpu").predict([p for p, _ in valid], unknown_score="msp")
    correct = [a.score for a, (_, label) in zip(answers, valid, strict=True) if a.label == label]
    kept = sum(score >= threshold for score in correct) / len(correct)
    assert len(correct) >= 20  # enough for a 5% step to show
    assert 0.95 <= kept < 0.95 + 1 / len(correct)  # 95%: not 90%, not "all of them"
