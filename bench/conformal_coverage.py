"""Empirical coverage of a bundle's conformal prediction sets on a labelled test folder.

Predicts every image of DATA/test/<class>/ through `Predictor.predict` (the path `visiontune
predict` and `serve` take) and reports: the share of images whose prediction set holds the true
class (overall and per class, each with its 95% Wilson interval), the mean set size, the share of
empty and single-label sets, accuracy, and the share of test images flagged unknown at the
bundle's threshold (its default score, and every other one it has).

Usage:
    python bench/conformal_coverage.py --run runs/demo --data demo
    python bench/conformal_coverage.py --run runs/full --data full --coverage 0.9
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a run or bundle folder")
    parser.add_argument("--data", required=True, type=Path, help="a folder with test/<class>/ images")
    parser.add_argument("--coverage", type=float, default=None, help="default: the bundle's (0.9)")
    args = parser.parse_args()

    from visiontune.data.images import is_image_file
    from visiontune.predict import Predictor

    predictor = Predictor.load(args.run, device="cpu")
    files = sorted(p for p in (args.data / "test").rglob("*") if is_image_file(p))
    labels = [p.parent.name for p in files]
    started = time.perf_counter()
    kept = predictor.predict(files, coverage=args.coverage)  # the bundle's default unknown score
    seconds = time.perf_counter() - started
    scores = {predictor.resolve_score(): sum(p.unknown for p in kept) / len(kept)}
    msp = predictor.calibration.threshold("msp")  # the top probability is msp: no second pass needed
    if msp is not None:
        scores.setdefault("msp", sum(p.probability < msp for p in kept) / len(kept))
    conformal = predictor.calibration.conformal
    coverage = args.coverage or conformal.coverage
    covered = [label in p.prediction_set for p, label in zip(kept, labels, strict=True)]
    sizes = [len(p.prediction_set) for p in kept]
    print(f"bundle {args.run}: {conformal.method}, randomised={conformal.randomized}, mondrian={conformal.mondrian}, "
          f"fitted on {len(conformal.scores)} validation images; target coverage {coverage:.2f}")  # fmt: skip
    print(f"{len(files)} test images, predicted in {seconds:.0f} s")
    _row("all", covered, coverage)
    by_class = defaultdict(list)
    for hit, label in zip(covered, labels, strict=True):
        by_class[label].append(hit)
    worst = max(abs(sum(v) / len(v) - coverage) for v in by_class.values())
    for label in sorted(by_class):
        _row(label, by_class[label], coverage)
    accuracy = sum(p.label == label for p, label in zip(kept, labels, strict=True)) / len(kept)
    print(f"\nmean set size {sum(sizes) / len(sizes):.3f}; empty sets {sizes.count(0) / len(sizes):.1%}, "
          f"single label {sizes.count(1) / len(sizes):.1%}; top-1 accuracy {accuracy:.4f}")  # fmt: skip
    print(f"largest per-class gap from the target: {100 * worst:.1f} points")
    flagged = ", ".join(f"{name} {share:.1%} (threshold {predictor.calibration.threshold(name):.4g})"
                        for name, share in scores.items())  # fmt: skip
    print(f"test images flagged unknown at the bundle's thresholds: {flagged}; default {predictor.resolve_score()}")


def _row(name: str, hits: list[bool], target: float) -> None:
    from visiontune.evaluation.intervals import wilson_interval

    low, high = wilson_interval(sum(hits), len(hits))
    rate = sum(hits) / len(hits)
    print(f"| {name} | {len(hits)} | {rate:.4f} | [{low:.3f}, {high:.3f}] | {100 * (rate - target):+.1f} |")


if __name__ == "__main__":
    main()
