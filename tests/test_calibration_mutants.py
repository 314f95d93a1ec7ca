"""Calibration: what the first tests left open (found by `make mutation`, see docs/mutation.md).

The clamp and the "nothing to fit" cases of the temperature, the ECE's bins, the threshold's edges,
the feature score's errors, and the bundle block as bundle.json stores it. Embeddings for the k-NN
detector are real images: scikit-learn's 8x8 digits as 64-number vectors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from tests.test_calibration import sampled_logits
from visiontune.calibration import (
    Calibration,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    fit_unknown_threshold,
    reliability_bins,
    unknown_scores,
)
from visiontune.detector import fit_knn
from visiontune.errors import ConfigError


def test_nothing_to_fit_leaves_the_temperature_at_one() -> None:
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0
    assert fit_temperature(torch.randn(8, 1), torch.zeros(8, dtype=torch.long)) == 1.0  # one class
    logits, targets = sampled_logits(2.0, k=2, n=2000)
    assert fit_temperature(logits, targets) == pytest.approx(2.0, rel=0.15)  # two classes are enough


def test_the_temperature_is_clamped_to_its_documented_range() -> None:
    logits, targets = sampled_logits(1.0, n=2000, k=4)
    shuffled = targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(1))]
    assert fit_temperature(logits * 50, shuffled) == 20.0  # labels unrelated to the logits: T -> infinity
    mostly_right = logits.argmax(1)
    mostly_right[0] = (mostly_right[0] + 1) % 4
    assert fit_temperature(logits * 1e-3, mostly_right) == 0.05  # right but timid: T -> 0


def test_ece_is_the_count_weighted_gap_of_confidence_and_accuracy() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.3, 0.7]])
    targets = torch.tensor([0, 1, 1, 1])  # confidence 0.9 right half the time, 0.7 always right
    assert expected_calibration_error(probs, targets) == pytest.approx((0.4 * 2 + 0.3 * 2) / 4)
    assert math.isnan(expected_calibration_error(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))


def test_reliability_bins_are_left_open_and_right_closed() -> None:
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.8, 0.2]])
    rows = reliability_bins(probs, torch.tensor([0, 0, 1]), bins=4)
    assert [(r["low"], r["high"], r["count"]) for r in rows] == [
        (0.0, 0.25, 0),
        (0.25, 0.5, 1),
        (0.5, 0.75, 0),
        (0.75, 1.0, 2),
    ]
    assert (rows[1]["confidence"], rows[1]["accuracy"]) == (0.5, 1.0)  # 0.5 sits in (0.25, 0.5]
    assert rows[3]["confidence"] == pytest.approx(0.9) and rows[3]["accuracy"] == 0.5
    assert math.isnan(rows[0]["confidence"]) and math.isnan(rows[0]["accuracy"])


def test_the_threshold_at_its_edges() -> None:
    logits, targets = sampled_logits(1.0, n=2000, k=4)
    correct = logits.argmax(1) == targets
    everything = fit_unknown_threshold(logits, targets, keep=1.0)  # keep every correct prediction
    assert everything == pytest.approx(float(unknown_scores(logits[correct]).min()))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=rf"`keep` must be in \(0, 1\]. Received: keep={bad}"):
            fit_unknown_threshold(logits, targets, keep=bad)
    wrong = (logits.argmax(1) + 1) % 4
    assert fit_unknown_threshold(logits, wrong) is None  # no correct prediction: nothing to calibrate on


def test_a_score_equal_to_the_threshold_is_known() -> None:
    """Unknown means strictly below: the threshold is the lowest kept score."""
    cal = Calibration(thresholds={"msp": 0.5})
    assert cal.flag(torch.tensor([0.4, 0.5, 0.6])).tolist() == [True, False, False]
    assert Calibration().flag(torch.tensor([0.1])).dtype == torch.bool  # no threshold: still a bool mask
    with pytest.raises(ConfigError, match="unknown_score"):
        cal.threshold("entropy")


def test_the_stored_score_is_the_default_everywhere() -> None:
    logits = torch.tensor([[4.0, 0.0], [0.2, 0.0]])
    cal = Calibration(temperature=2.0, score="energy", thresholds={"msp": 0.6, "energy": 2.0})
    assert torch.equal(cal.scores(logits), unknown_scores(logits, temperature=2.0, score="energy"))
    assert cal.threshold() == 2.0 and cal.is_unknown(logits).tolist() == [False, True]  # energies 4.25, 1.44
    assert cal.is_unknown(logits, "msp").tolist() == [False, True]  # msps 0.88, 0.52 against 0.6


def test_thresholds_are_a_frozen_copy() -> None:
    given = {"msp": 0.5}
    cal = Calibration(thresholds=given)
    given["msp"] = 0.9
    assert cal.threshold() == 0.5
    with pytest.raises(TypeError):
        cal.thresholds["msp"] = 0.1  # type: ignore[index]


def test_the_knn_score_says_what_is_missing() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ConfigError) as old:
        Calibration().scores(logits, "knn")
    assert str(old.value) == "this bundle has no 'knn' detector (trained before it existed): use --unknown-score msp"
    digits = torch.tensor(load_digits().data[:50], dtype=torch.float32)
    with_bank = Calibration().with_detector(fit_knn(digits[:30], k=3), digits[30:])
    with pytest.raises(ConfigError) as no_embeddings:
        with_bank.is_unknown(logits)
    assert str(no_embeddings.value) == (
        "the 'knn' score needs the images' embeddings, which this model can't give: use --unknown-score msp"
    )


def test_with_detector_makes_knn_the_default_and_keeps_the_logit_thresholds() -> None:
    data = load_digits()
    images, labels = torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target)
    detector = fit_knn(images[labels < 5][:300], k=5)
    valid = images[labels < 5][300:]  # 600-odd images of the same digits, unseen by the bank
    cal = Calibration(thresholds={"msp": 0.5}).with_detector(detector, valid, alpha=0.1)
    assert cal.score == "knn" and cal.threshold("msp") == 0.5 and cal.detector is detector
    flagged = float(cal.is_unknown(torch.zeros(len(valid), 2), embeddings=valid).float().mean())
    assert 0.08 <= flagged <= 0.1  # the conformal guarantee at the asked alpha, on the images it was fitted on
    other = images[labels >= 5]
    assert float(cal.is_unknown(torch.zeros(len(other), 2), embeddings=other).float().mean()) > 0.3
    assert cal.detector_info == {
        **detector.to_dict(),
        "alpha": 0.1,
        "guarantee": "at most 10% of in-distribution images",
    }
    block = cal.to_dict()["unknown"]
    assert block["detector"] == cal.detector_info and block["thresholds"]["knn"] == cal.threshold("knn")
    again = Calibration.from_dict(cal.to_dict())
    assert again.detector_info == cal.detector_info and again.detector is None  # the bank is loaded by the bundle


def test_the_bundle_block_as_stored() -> None:
    assert Calibration().to_dict() == {"temperature": 1.0, "unknown": {"score": "msp", "keep": None, "thresholds": {}}}
    logits, targets = sampled_logits(1.5, n=500, k=4)
    block = calibrate(logits, targets).to_dict()
    assert block["fitted_on"] == {"split": "valid", "images": 500}
    assert set(block) == {
        "temperature",
        "unknown",
        "ece_before",
        "ece_after",
        "nll_before",
        "nll_after",
        "fitted_on",
        "conformal",
    }
    assert block["unknown"]["keep"] == 0.95 and block["unknown"]["score"] == "msp"


def test_hand_edited_blocks_are_refused_or_read_leniently() -> None:
    with pytest.raises(ConfigError) as text:
        Calibration.from_dict({"unknown": {"thresholds": {"msp": "high"}}})
    assert str(text.value) == "calibration `thresholds.msp` must be a number. Received: thresholds.msp='high'"
    with pytest.raises(ConfigError, match=r"calibration `thresholds.energy` must be a finite number"):
        Calibration.from_dict({"unknown": {"thresholds": {"energy": float("inf")}}})
    lenient = Calibration.from_dict(
        {
            "temperature": None,
            "fitted_on": 30,
            "conformal": "x",
            "unknown": {"score": None, "thresholds": {"msp": None}, "detector": "x"},
        }
    )
    assert (lenient.temperature, lenient.score, lenient.threshold()) == (1.0, "msp", None)
    assert lenient.fitted_on is None and lenient.conformal is None and lenient.detector_info is None
    both = Calibration.from_dict({"unknown_threshold": 0.2, "unknown": {"thresholds": {"msp": 0.7}}})
    assert both.threshold() == 0.7  # the newer block wins over the flat one


def test_calibrate_stores_the_numbers_of_what_predict_reports() -> None:
    logits, targets = sampled_logits(2.0, n=1000, k=4)
    cal = calibrate(logits, targets, keep=0.8, coverage=0.7)
    probs = cal.probabilities(logits)
    assert cal.nll_after == pytest.approx(float(F.nll_loss(probs.log(), targets)), rel=1e-5)
    assert cal.nll_before == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-5)
    assert cal.ece_after == pytest.approx(expected_calibration_error(probs, targets), abs=1e-6)
    assert cal.ece_before == pytest.approx(expected_calibration_error(logits.softmax(1), targets), abs=1e-6)
    assert cal.keep == 0.8 and cal.fitted_on == 1000
    assert cal.threshold("energy") == fit_unknown_threshold(
        logits, targets, temperature=cal.temperature, score="energy", keep=0.8
    )
    sets = cal.prediction_sets(probs)
    assert sets is not None and 0.65 <= float(sets[torch.arange(1000), targets].float().mean()) <= 0.75
    wider = cal.prediction_sets(probs, coverage=0.95)
    assert wider is not None and float(wider.sum()) > float(sets.sum())
    assert Calibration().prediction_sets(probs) is None


def test_calibrate_on_no_validation_images_stores_no_numbers() -> None:
    cal = calibrate(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert cal.temperature == 1.0 and cal.fitted_on == 0 and cal.threshold() is None
    assert all(math.isnan(v) for v in (cal.nll_before, cal.nll_after, cal.ece_before, cal.ece_after))


def test_the_threshold_is_fitted_on_the_temperature_scaled_scores() -> None:
    logits, targets = sampled_logits(2.0, n=2000, k=4)
    correct = logits.argmax(1) == targets
    threshold = fit_unknown_threshold(logits, targets, temperature=2.0, keep=0.8)
    kept = (unknown_scores(logits[correct], temperature=2.0) >= threshold).float().mean()
    assert float(kept) == pytest.approx(0.8, abs=0.005)
