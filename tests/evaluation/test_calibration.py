"""Temperature scaling, ECE and the unknown threshold: the numbers predict's "unknown" rests on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visiontune.errors import ConfigError
from visiontune.evaluation.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    fit_unknown_threshold,
    unknown_scores,
    unknown_threshold,
)


def _sampled(temperature: float, n: int = 20_000, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits / temperature): T is the right answer by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * 3
    targets = torch.multinomial((logits / temperature).softmax(1), 1, generator=generator).squeeze(1)
    return logits, targets


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_is_recovered(true_t: float) -> None:
    logits, targets = _sampled(true_t)
    assert fit_temperature(logits, targets) == pytest.approx(true_t, rel=0.08)


def test_scaling_fixes_an_overconfident_model() -> None:
    logits, targets = _sampled(2.5)  # the model's logits are 2.5x too sharp
    before = expected_calibration_error(logits.softmax(1), targets)
    after = expected_calibration_error((logits / fit_temperature(logits, targets)).softmax(1), targets)
    assert before > 0.1 and after < 0.02


def test_no_validation_errors_leaves_the_temperature_alone() -> None:
    logits = torch.eye(3).repeat(4, 1) * 5
    assert fit_temperature(logits, logits.argmax(1)) == 1.0


def test_threshold_keeps_the_asked_share_of_correct_predictions() -> None:
    logits, targets = _sampled(1.0)
    threshold = fit_unknown_threshold(logits, targets, keep=0.9)
    correct = logits.argmax(1) == targets
    kept = (unknown_scores(logits[correct]) >= threshold).float().mean()
    assert float(kept) == pytest.approx(0.9, abs=0.005)
    energy = fit_unknown_threshold(logits, targets, score="energy", keep=0.9)
    assert float((unknown_scores(logits[correct], score="energy") >= energy).float().mean()) == pytest.approx(
        0.9, abs=0.005
    )


def test_bad_score_names_are_clear() -> None:
    with pytest.raises(ConfigError, match="msp, energy"):
        unknown_scores(torch.zeros(1, 2), score="entropy")
    assert unknown_threshold({"temperature": 1.0, "unknown_threshold": 0.7}) == ("msp", 0.7)  # older bundles


def test_calibrate_never_raises_the_nll() -> None:
    logits, targets = _sampled(0.5)
    block = calibrate(logits * 0.5, targets)  # under-confident logits: T < 1 sharpens them
    assert block["temperature"] < 1.0 and block["nll_after"] <= block["nll_before"]
    assert block["ece_after"] < block["ece_before"]
    assert set(block["unknown"]["thresholds"]) == {"msp", "energy"}


@pytest.mark.parametrize("fixture", ["finetuned_run", "features_run"])
def test_trained_bundles_carry_their_calibration(fixture: str, request: pytest.FixtureRequest) -> None:
    run: Path = request.getfixturevalue(fixture)
    meta = json.loads((run / "model" / "bundle.json").read_text())
    calibration = meta["calibration"]
    assert calibration["fitted_on"] == {"split": "valid", "images": 30}
    assert 0.05 <= calibration["temperature"] <= 20
    assert 0.0 < calibration["unknown"]["thresholds"]["msp"] <= 1.0
    assert "valid_ece" in meta["metrics"] and "test_ece" in meta["metrics"]
    assert json.loads((run / "results.json").read_text())["calibration"] == calibration
