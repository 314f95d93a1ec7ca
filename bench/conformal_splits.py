"""Coverage of a run's conformal sets over many random calibration/test splits, beside its one product split.

The conformal guarantee (P(true class in the set) >= coverage) is a statement in expectation over
the draw of the calibration images as well as the test image (Angelopoulos & Bates, "A gentle
introduction to conformal prediction", section 3: checking coverage). One split of a small data
set scatters around it: with 60 calibration images per class (Mondrian) a class's own threshold
moves its coverage by about +-4 points (sd), and 100 test images per class add +-3. So this
script pools the run's validation and test images, draws R random splits of the same sizes,
stratified by class as the product's split is (each class: as many calibration images as the
run's validation split has of it, the rest of that class to test), fits on each calibration
part exactly what training fits at its end (`visiontune.calibration.calibrate`: temperature,
then the conformal sets on the temperature-scaled probabilities) and scores the test part.

The logits are the bundle's own (one forward pass per image through `Predictor`'s runner, the
path predict and evaluate take), computed once; each split then costs a calibration fit.

Reports mean coverage overall and per class with the spread over splits (sd, 5th-95th
percentile), and the product split: the bundle's stored calibration scored on the run's test
split (the figure `visiontune evaluate` reports).

Usage:
    python bench/conformal_splits.py --run runs/demo --data demo --splits 1000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a run folder (with splits.csv)")
    parser.add_argument("--data", required=True, type=Path, help="its data folder (where the split images are now)")
    parser.add_argument("--splits", type=int, default=1000, help="random calibration/test splits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from visiontune.predict import Predictor

    predictor = Predictor.load(args.run, device="cpu")
    started = time.perf_counter()
    valid, valid_y = split_logits(predictor, args.run, args.data, "valid")
    test, test_y = split_logits(predictor, args.run, args.data, "test")
    print(f"logits of {len(valid_y)} validation and {len(test_y)} test images in {time.perf_counter() - started:.0f} s")
    classes = predictor.classes
    coverage = predictor.calibration.conformal.coverage
    product = covered(predictor.calibration, test, test_y)
    started = time.perf_counter()
    draws = resampled(torch.cat([valid, test]), torch.cat([valid_y, test_y]), valid_y, args.splits, args.seed)
    print(f"{args.splits} splits in {time.perf_counter() - started:.0f} s; target coverage {coverage:.2f}\n")
    print("| class | product split | mean over splits | sd | 5th-95th percentile | splits within the bar |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [("all", product.float().mean(), draws[:, 0])]
    rows += [(name, product[test_y == c].float().mean(), draws[:, c + 1]) for c, name in enumerate(classes)]
    for name, single, values in rows:
        low, high = np.percentile(values, [5, 95])
        within = np.mean(np.abs(values - coverage) <= (0.015 if name == "all" else 0.05))
        print(f"| {name} | {float(single):.3f} | **{values.mean():.4f}** | {values.std():.4f} "
              f"| {low:.3f}-{high:.3f} | {within:.1%} |")  # fmt: skip
    classwise = np.abs(draws[:, 1:] - coverage).max(axis=1) <= 0.05
    print(f"\nsplits with every class within 5 points: {classwise.mean():.1%}; overall within 1.5 points: "
          f"{np.mean(np.abs(draws[:, 0] - coverage) <= 0.015):.1%}")  # fmt: skip


def split_logits(predictor: object, run: Path, data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) raw logits and (N,) class indices of a split of the run, through the predictor's own forward."""
    from visiontune.runs.folder import RunFolder

    rows = RunFolder(run).split_files(split, data_root=predictor.meta.training.get("data_root"), data=data)
    rows = [(path, label) for path, label in rows or [] if path is not None]
    runner = predictor.runner
    scored = runner.outputs(runner.loader(predictor.dataset([path for path, _ in rows])))
    labels = torch.tensor([predictor.classes.index(rows[i][1]) for i in scored.indices.tolist()])
    return scored.outputs, labels


def covered(calibration: object, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether each image's conformal set (calibration's own, at its coverage) holds its class."""
    sets = calibration.prediction_sets(calibration.probabilities(logits))
    return sets[torch.arange(len(labels)), labels]


def resampled(
    logits: torch.Tensor, labels: torch.Tensor, valid_labels: torch.Tensor, splits: int, seed: int
) -> np.ndarray:
    """(splits, 1 + K) coverage overall and per class over random stratified calibration/test splits."""
    from visiontune.calibration import calibrate

    num_classes = logits.shape[1]
    members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    calibration_sizes = [int((valid_labels == c).sum()) for c in range(num_classes)]
    generator = torch.Generator().manual_seed(seed)
    out = np.zeros((splits, 1 + num_classes))
    for draw in range(splits):
        shuffled = [m[torch.randperm(len(m), generator=generator)] for m in members]
        fit = torch.cat([s[:n] for s, n in zip(shuffled, calibration_sizes, strict=True)])
        held = torch.cat([s[n:] for s, n in zip(shuffled, calibration_sizes, strict=True)])
        hits = covered(calibrate(logits[fit], labels[fit]), logits[held], labels[held]).float()
        out[draw, 0] = float(hits.mean())
        for c in range(num_classes):
            out[draw, c + 1] = float(hits[labels[held] == c].mean())
    return out


if __name__ == "__main__":
    main()
