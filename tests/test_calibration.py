"""Temperature scaling, ECE and the unknown threshold: the numbers predict's "unknown" rests on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from visiontune.calibration import (
    Calibration,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    fit_unknown_threshold,
    unknown_scores,
)
from visiontune.errors import ConfigError


def sampled_logits(temperature: float, n: int = 20_000, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits / temperature): T is the right answer by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * 3
    targets = torch.multinomial((logits / temperature).softmax(1), 1, generator=generator).squeeze(1)
    return logits, targets


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_is_recovered(true_t: float) -> None:
    logits, targets = sampled_logits(true_t)
    assert fit_temperature(logits, targets) == pytest.approx(true_t, rel=0.08)


def test_scaling_fixes_an_overconfident_model() -> None:
    logits, targets = sampled_logits(2.5)  # the model's logits are 2.5x too sharp
    before = expected_calibration_error(logits.softmax(1), targets)
    after = expected_calibration_error((logits / fit_temperature(logits, targets)).softmax(1), targets)
    assert before > 0.1 and after < 0.02


def test_no_validation_errors_leaves_the_temperature_alone() -> None:
    logits = torch.eye(3).repeat(4, 1) * 5
    assert fit_temperature(logits, logits.argmax(1)) == 1.0


def test_threshold_keeps_the_asked_share_of_correct_predictions() -> None:
    logits, targets = sampled_logits(1.0)
    threshold = fit_unknown_threshold(logits, targets, keep=0.9)
    correct = logits.argmax(1) == targets
    kept = (unknown_scores(logits[correct]) >= threshold).float().mean()
    assert float(kept) == pytest.approx(0.9, abs=0.005)
    energy = fit_unknown_threshold(logits, targets, score="energy", keep=0.9)
    assert float((unknown_scores(logits[correct], score="energy") >= energy).float().mean()) == pytest.approx(
        0.9, abs=0.005
    )


def test_bad_score_names_are_clear() -> None:
    with pytest.raises(ConfigError, match="'msp', 'energy'"):
        unknown_scores(torch.zeros(1, 2), score="entropy")
    with pytest.raises(ConfigError, match="msp"):
        Calibration(thresholds={"entropy": 0.5})


def test_older_bundle_blocks_still_read() -> None:
    flat = Calibration.from_dict({"temperature": 1.5, "unknown_threshold": 0.7})  # the first release's form
    assert (flat.temperature, flat.score, flat.threshold()) == (1.5, "msp", 0.7)
    assert not flat.fitted and flat.threshold("energy") is None
    assert Calibration.from_dict(None) == Calibration()


def test_a_bundle_block_round_trips() -> None:
    logits, targets = sampled_logits(2.0, n=2000)
    fitted = calibrate(logits, targets)
    again = Calibration.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert again == fitted and again.fitted and again.fitted_on == 2000


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0, float("inf")])
def test_a_temperature_that_is_not_a_positive_number_is_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        Calibration.from_dict({"temperature": bad})


def test_probabilities_and_unknown_follow_the_fitted_numbers() -> None:
    cal = Calibration(temperature=2.0, thresholds={"msp": 0.6, "energy": 1.0})
    logits = torch.tensor([[4.0, 0.0], [0.2, 0.0]])
    expected = (logits / 2).softmax(1)
    assert torch.allclose(cal.probabilities(logits), expected)
    assert cal.is_unknown(logits).tolist() == [False, True]  # max probs 0.88 and 0.52 against 0.6
    energy = 2.0 * torch.logsumexp(logits / 2, dim=1)  # 4.25, 1.44: both above 1.0
    assert torch.allclose(cal.scores(logits, "energy"), energy)
    assert cal.is_unknown(logits, "energy").tolist() == [False, False]
    assert Calibration().is_unknown(logits).tolist() == [False, False]  # no threshold: never unknown


def test_calibrate_never_raises_the_nll() -> None:
    logits, targets = sampled_logits(0.5)
    cal = calibrate(logits * 0.5, targets)  # under-confident logits: T < 1 sharpens them
    assert cal.temperature < 1.0 and cal.nll_after <= cal.nll_before
    assert cal.ece_after < cal.ece_before
    assert set(cal.thresholds) == {"msp", "energy"}


@pytest.mark.parametrize("fixture", ["finetuned_run", "features_run"])
def test_trained_bundles_carry_their_calibration(fixture: str, request: pytest.FixtureRequest) -> None:
    run: Path = request.getfixturevalue(fixture)
    meta = json.loads((run / "model" / "bundle.json").read_text())
    calibration = meta["calibration"]
    assert calibration["fitted_on"] == {"split": "valid", "images": 30}
    assert 0.05 < calibration["temperature"] < 20  # fitted, not stopped at a clamp (the NLL's minimum:
    assert calibration["nll_after"] <= calibration["nll_before"]  # tests/training/test_trained_bundle.py)
    assert calibration["unknown"]["keep"] == 0.95 and 0.0 < calibration["unknown"]["thresholds"]["msp"] < 1.0
    assert "valid_ece" in meta["metrics"] and "test_ece" in meta["metrics"]
    assert json.loads((run / "results.json").read_text())["calibration"] == calibration
