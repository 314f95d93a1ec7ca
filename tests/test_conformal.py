"""Conformal prediction sets: the published algorithm by hand, against MAPIE, and coverage where the truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visiontune.conformal import (
    ConformalSets,
    check_coverage,
    conformal_quantile,
    fit_conformal,
    label_scores,
    tie_breaks,
)
from visiontune.errors import ConfigError


def test_aps_scores_by_hand() -> None:
    probs = torch.tensor([[0.2, 0.5, 0.3]])  # ranked: label 1 (0.5), label 2 (0.3), label 0 (0.2)
    # mass at or above each label minus u * its own probability
    assert label_scores(probs, torch.tensor([1.0]))[0].tolist() == pytest.approx([0.8, 0.0, 0.5])
    assert label_scores(probs, torch.tensor([0.5]))[0].tolist() == pytest.approx([0.9, 0.25, 0.65])
    assert label_scores(probs, torch.tensor([0.0]))[0].tolist() == pytest.approx([1.0, 0.5, 0.8])
    # RAPS: + lam per rank beyond k_reg
    raps = label_scores(probs, torch.tensor([0.0]), lam=0.1, k_reg=1)[0].tolist()
    assert raps == pytest.approx([1.2, 0.5, 0.9])


def test_quantile_is_the_finite_sample_order_statistic() -> None:
    scores = [0.1 * i for i in range(1, 11)]  # n = 10
    assert conformal_quantile(scores, 0.9) == pytest.approx(1.0)  # ceil(11 * 0.9) = 10th smallest
    assert conformal_quantile(scores, 0.8) == pytest.approx(0.9)  # ceil(8.8) = 9th
    assert conformal_quantile(scores[:5], 0.9) == math.inf  # ceil(5.4) = 6 > 5: too few, every label kept


def test_sets_by_hand() -> None:
    # five validation images, all of class 0 or 1 with known scores (u = 1: mass ranked above the label)
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.9, 0.1], [0.45, 0.55]])
    targets = torch.tensor([0, 1, 1, 0, 0])  # scores 0, 0.7, 0, 0, 0.55
    sets = fit_conformal(probs, targets, coverage=0.5, randomized=False, mondrian_min=100)
    assert sets.scores == pytest.approx((0.0, 0.0, 0.0, 0.55, 0.7))
    assert sets.thresholds().tolist() == [0.0, 0.0]  # ceil(6 * 0.5) = 3rd smallest
    assert sets.predict(torch.tensor([[0.3, 0.7]])).tolist() == [[False, True]]
    assert sets.thresholds(0.6).tolist() == pytest.approx([0.55, 0.55])  # ceil(3.6) = 4th smallest
    assert sets.thresholds(0.75).tolist() == pytest.approx([0.7, 0.7])  # ceil(4.5) = 5th
    assert sets.predict(torch.tensor([[0.5, 0.5]]), coverage=0.75).tolist() == [[True, True]]


def test_tie_breaks_are_deterministic_uniforms() -> None:
    probs = torch.rand(4000, 7, generator=torch.Generator().manual_seed(1)).softmax(dim=1)
    u = tie_breaks(probs)
    assert torch.equal(u, tie_breaks(probs.clone()))  # same image, same u
    # a backend's rounding noise (1e-7) moves a rounded probability only next to a rounding boundary
    assert float((u == tie_breaks(probs + 1e-7)).double().mean()) > 0.99
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float((u < 0.1).double().mean()) - 0.1) < 0.02


def test_confident_rows_get_their_own_uniforms() -> None:
    """Confident rows all round to (1, 0, ...) in probability: hashing that would give them one shared u."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2000, 10, generator=generator)
    logits[:, 0] += 25  # top probability above 1 - 1e-8 for every row
    u = tie_breaks(logits.double().softmax(dim=1))
    assert len(set(u.tolist())) == 2000 and abs(float(u.mean()) - 0.5) < 0.03


def test_round_trip_through_the_bundle_block() -> None:
    probs, targets = _draw(300, k=4, seed=3)
    sets = fit_conformal(probs, targets, mondrian_min=20)
    again = ConformalSets.from_dict(sets.to_dict())
    assert again.mondrian and again.randomized and again.method == "aps"
    test, _ = _draw(500, k=4, seed=4)  # fresh images: no score sits exactly at a rounded threshold
    assert torch.equal(again.predict(test), sets.predict(test))


def test_bad_coverage_is_refused() -> None:
    for bad in (0, 1, 1.5, float("nan"), -0.1):
        with pytest.raises(ConfigError, match="coverage"):
            check_coverage(bad)


# ---- the same sets as MAPIE on the same scores -------------------------------------------------


@pytest.mark.parametrize("include_last", ["randomized", True])
def test_sets_match_mapie(include_last: bool | str) -> None:
    aps = pytest.importorskip("mapie.conformity_scores").APSConformityScore
    valid, valid_y = _draw(400, k=6, seed=11)
    test, _ = _draw(300, k=6, seed=12)
    alpha = np.array([0.1])
    score = aps()
    score.set_external_attributes(classes=np.arange(6), random_state=7)
    mapie_scores = score.get_conformity_scores(valid_y.numpy(), valid.numpy(), y_enc=valid_y.numpy())
    score.quantiles_ = score.get_conformity_score_quantiles(mapie_scores, alpha, cv="prefit")
    repeated = score.get_predictions(None, alpha, test.numpy(), cv="prefit")  # (N, K, 1)
    mapie_sets = score.get_prediction_sets(repeated, mapie_scores, alpha, cv="prefit",
                                           include_last_label=include_last)[:, :, 0]  # fmt: skip
    # ours with MAPIE's uniforms: it draws u from RandomState(7) for the scores and again for the sets
    u_valid = torch.tensor(np.random.RandomState(7).uniform(size=len(valid)))
    u_test = torch.tensor(np.random.RandomState(7).uniform(size=len(test)))
    true = label_scores(valid, u_valid).gather(1, valid_y.view(-1, 1)).squeeze(1)
    assert true.numpy() == pytest.approx(mapie_scores.ravel(), abs=1e-9)
    qhat = conformal_quantile(true.numpy(), 0.9)
    assert qhat == pytest.approx(float(np.ravel(score.quantiles_)[0]), abs=1e-12)
    u = u_test if include_last == "randomized" else torch.ones(len(test), dtype=torch.float64)
    ours = (label_scores(test, u) <= qhat).numpy()
    assert ours.sum() > len(test)  # sets of more than one label occur
    assert (ours == mapie_sets).all()


# ---- coverage where the truth is known ---------------------------------------------------------


def _draw(n: int, *, k: int, seed: int, sharp: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and labels drawn from them: a perfectly calibrated model of k classes."""
    generator = torch.Generator().manual_seed(seed)
    probs = (torch.randn(n, k, generator=generator) * sharp).softmax(dim=1).double()
    return probs, torch.multinomial(probs, 1, generator=generator).squeeze(1)


@pytest.mark.parametrize("randomized", [True, False])
def test_coverage_over_repeated_seeds(randomized: bool) -> None:
    """Mean coverage over 40 calibration/test draws: >= 90%, and for randomised sets below 90% + 1/(n+1)."""
    n, coverage = 500, 0.9
    rates, per_class = [], []
    for seed in range(40):
        valid, valid_y = _draw(n, k=5, seed=2 * seed)
        test, test_y = _draw(2000, k=5, seed=2 * seed + 1)
        sets = fit_conformal(valid, valid_y, coverage=coverage, randomized=randomized, mondrian_min=10_000)
        hits = sets.predict(test).gather(1, test_y.view(-1, 1)).squeeze(1).double()
        rates.append(float(hits.mean()))
        mondrian = fit_conformal(valid, valid_y, coverage=coverage, randomized=randomized, mondrian_min=50)
        assert mondrian.mondrian
        covered = mondrian.predict(test).gather(1, test_y.view(-1, 1)).squeeze(1).double()
        per_class.append([float(covered[test_y == c].mean()) for c in range(5)])
    mean, error = np.mean(rates), 3 * np.std(rates) / math.sqrt(len(rates))
    assert mean >= coverage - error
    if randomized:  # exact: within 1/(n+1) above the target
        assert mean <= coverage + 1 / (n + 1) + error
    class_means = np.mean(per_class, axis=0)  # Mondrian: every class covered on average
    assert (class_means >= coverage - 0.01).all()


def test_mondrian_covers_a_hard_class_that_marginal_sets_miss() -> None:
    """A class the model confuses more gets less than 90% from one shared qhat; its own qhat restores it."""
    generator = torch.Generator().manual_seed(0)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        targets = torch.randint(0, 4, (n,), generator=generator)
        logits = torch.randn(n, 4, generator=generator)
        logits[torch.arange(n), targets] += torch.where(targets == 3, 0.3, 4.0)  # class 3 is hard
        return logits.softmax(dim=1).double(), targets

    valid, valid_y = draw(4000)
    test, test_y = draw(8000)
    hard = test_y == 3
    marginal = fit_conformal(valid, valid_y, mondrian_min=10_000)
    mondrian = fit_conformal(valid, valid_y)
    assert mondrian.mondrian and not marginal.mondrian
    marginal_hits = marginal.predict(test).gather(1, test_y.view(-1, 1)).squeeze(1)
    mondrian_hits = mondrian.predict(test).gather(1, test_y.view(-1, 1)).squeeze(1)
    assert float(marginal_hits[hard].double().mean()) < 0.85
    assert abs(float(mondrian_hits[hard].double().mean()) - 0.9) < 0.03
