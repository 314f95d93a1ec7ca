"""The k-NN unknown score: far images score low, and the conformal threshold flags at most alpha of known ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visiontune.detector import KNNDetector, bank_rows, conformal_threshold, fit_knn


def _clusters(n: int, seed: int, centre: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    means = torch.eye(4, 32) * 5 + centre
    return means[torch.randint(0, 4, (n,), generator=generator)] + torch.randn(n, 32, generator=generator)


def test_far_images_score_below_known_ones(tmp_path) -> None:
    detector = fit_knn(_clusters(3000, 0), k=5, cap=1000, seed=1)
    assert detector.bank.shape == (1000, 32)
    known, far = detector.scores(_clusters(200, 2)), detector.scores(torch.randn(200, 32) * 5)
    assert float(known.min()) > float(far.median())
    again = KNNDetector.load(detector_saved(detector, tmp_path), {"k": 5})
    assert torch.allclose(again.scores(_clusters(50, 3)), detector.scores(_clusters(50, 3)), atol=1e-3)


def detector_saved(detector: KNNDetector, folder):
    detector.save(folder)
    return folder


def test_conformal_threshold_flags_at_most_alpha() -> None:
    """Over repeated draws, the share of fresh in-distribution images below the threshold is <= 5% on average."""
    detector = fit_knn(_clusters(2000, 0), k=5, cap=500)
    shares = []
    for seed in range(15):
        threshold = conformal_threshold(detector.scores(_clusters(300, 100 + seed)), alpha=0.05)
        shares.append(float((detector.scores(_clusters(600, 200 + seed)) < threshold).double().mean()))
    assert np.mean(shares) <= 0.05 + 0.01
    assert np.mean(shares) >= 0.03  # and not needlessly strict
    assert conformal_threshold(torch.rand(10), alpha=0.05) is None  # 11 * 0.05 < 1: no guarantee possible


def test_wrong_dimension_is_refused() -> None:
    from visiontune.errors import BundleError

    with pytest.raises(BundleError, match="32-dimensional"):
        fit_knn(_clusters(100, 0)).scores(torch.randn(3, 8))


def test_bank_rows_are_the_rows_fit_knn_keeps() -> None:
    vectors = torch.randn(50, 8)
    assert bank_rows(50, cap=60) == list(range(50))  # under the cap: every row
    rows = bank_rows(50, cap=20, seed=3)
    assert len(rows) == len(set(rows)) == 20 and rows == sorted(rows)
    assert rows != bank_rows(50, cap=20, seed=4)
    drawn = fit_knn(vectors, cap=20, seed=3).bank
    assert torch.equal(drawn, fit_knn(vectors[rows], cap=20, seed=3).bank)  # a fitter may embed only these rows
