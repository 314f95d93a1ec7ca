"""The unknown detector a fine-tuned run fits: its bank and threshold are the vectors predict computes.

Training takes them from its own evaluation passes (validation's logits and embeddings in one
pass, over the decoded-once pixels), not from a separate reader, so these tests hold it to the
reader every user of the bundle goes through.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn.functional as F

import visiontune
from visiontune.detector import conformal_threshold
from visiontune.embedding import logits_and_embeddings


def _split(run: Path, name: str) -> list[Path]:
    with (run / "splits.csv").open() as f:
        return [Path(row["path"]) for row in csv.DictReader(f) if row["split"] == name]


def _embeddings(predictor: visiontune.Predictor, paths: list[Path]) -> torch.Tensor:
    runner, layout = predictor.runner, predictor.calibration.detector.embedding
    forward = logits_and_embeddings(predictor.model, layout)
    outputs = runner.outputs(runner.loader(predictor.dataset(paths)), forward=forward).outputs
    return outputs[:, predictor.num_classes :]


def test_the_bank_is_every_training_image_as_predict_embeds_it(finetuned_run: Path) -> None:
    predictor = visiontune.load(finetuned_run, device="cpu")
    detector = predictor.calibration.detector
    train = _split(finetuned_run, "train")
    assert detector.embedding == "stages" and len(detector.bank) == len(train) == 90  # under the cap: all of them
    expected = F.normalize(F.normalize(_embeddings(predictor, train), dim=1).half().float(), dim=1)
    assert torch.allclose(detector.bank.float(), expected, atol=2e-3)  # same rows, same order; fp16 storage


def test_the_threshold_is_the_conformal_cut_of_the_validation_images_scores(finetuned_run: Path) -> None:
    predictor = visiontune.load(finetuned_run, device="cpu")
    detector = predictor.calibration.detector
    valid = _embeddings(predictor, _split(finetuned_run, "valid"))
    threshold = predictor.calibration.thresholds["knn"]
    assert threshold is not None and abs(threshold - conformal_threshold(detector.scores(valid))) < 1e-3
