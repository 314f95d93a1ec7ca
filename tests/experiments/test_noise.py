"""Paired comparison of evaluated runs (McNemar) and tune's "within noise of the best"."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from visiontune.evaluation.answers import paired_test, read_answers, write_answers
from visiontune.experiments.noise import within_noise_of_best


def test_answers_round_trip_and_pair_only_on_the_same_images(tmp_path: Path) -> None:
    paths = [f"/data/test/x/{i}.png" for i in range(40)]
    targets = torch.zeros(40, dtype=torch.long)
    write_answers(tmp_path / "a", paths, targets, torch.zeros(40, dtype=torch.long), ["x", "y"])
    write_answers(tmp_path / "b", paths, targets, torch.tensor([0] * 28 + [1] * 12), ["x", "y"])
    a, b = read_answers(tmp_path / "a"), read_answers(tmp_path / "b")
    assert sum(a.values()) == 40 and sum(b.values()) == 28
    test = paired_test(a, b)
    assert (test["only_a"], test["only_b"], test["significant"]) == (12, 0, True)
    assert paired_test(a, {k: v for k, v in list(b.items())[:30]}) is None  # other images: no paired test
    assert read_answers(tmp_path / "never") is None


def test_trials_within_the_best_interval_are_marked(tmp_path: Path) -> None:
    run = tmp_path / "trial-0000"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"counts": {"valid": {"a": 300, "b": 300}}}))
    best = {"number": 0, "value": 0.90, "run_dir": str(run)}
    rows = [
        {"number": 0, "state": "complete", "value": 0.90},
        {"number": 1, "state": "complete", "value": 0.89},  # 1 point on 600 images: noise
        {"number": 2, "state": "complete", "value": 0.80},  # 10 points: real
        {"number": 3, "state": "pruned", "value": 0.895},
    ]
    assert within_noise_of_best(rows, best, "valid_accuracy") == {1}
    assert within_noise_of_best(rows, best, "valid_loss") == set()
