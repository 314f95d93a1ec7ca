"""Coverage of visiontune's conformal sets on the full Fashion-MNIST test set (10,000 images), cheaply.

The pipeline a bundle uses after its forward pass, on a model that needs no image forward pass:
a multinomial logistic regression on raw pixels (scikit-learn), fitted on `--train` training
images; then, as training's finish does, `calibrate` on a disjoint validation split of the 60,000
training images (temperature, thresholds, conformal sets: Mondrian when each class has >= 50) and
`Calibration.prediction_sets` on every test image. Repeated over `--seeds` draws of the
train/validation split. What it checks is the conformal layer on real data at full scale; the
end-to-end product path (images -> bundle -> predict) is measured by conformal_coverage.py.

Usage:
    python bench/conformal_full.py --train 10000 --valid 12000 --seeds 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--valid", type=int, default=12_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--coverage", type=float, default=0.9)
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression

    from visiontune.calibration import calibrate
    from visiontune.data.demo import load_full
    from visiontune.evaluation.intervals import wilson_interval

    arrays = load_full()
    x = arrays["train_images"].reshape(len(arrays["train_images"]), -1) / 255.0
    y = arrays["train_labels"]
    x_test = arrays["test_images"].reshape(len(arrays["test_images"]), -1) / 255.0
    y_test = torch.as_tensor(arrays["test_labels"])
    for seed in range(args.seeds):
        started = time.perf_counter()
        order = np.random.default_rng(seed).permutation(len(y))
        train, valid = order[: args.train], order[args.train : args.train + args.valid]
        model = LogisticRegression(max_iter=300, C=0.1).fit(x[train], y[train])
        valid_logits = torch.as_tensor(model.predict_log_proba(x[valid]), dtype=torch.float32)
        calibration = calibrate(valid_logits, torch.as_tensor(y[valid]), coverage=args.coverage)
        test_logits = torch.as_tensor(model.predict_log_proba(x_test), dtype=torch.float32)
        sets = calibration.prediction_sets(calibration.probabilities(test_logits))
        hits = sets.gather(1, y_test.view(-1, 1)).squeeze(1)
        per_class = [float(hits[y_test == c].double().mean()) for c in range(10)]
        low, high = wilson_interval(int(hits.sum()), len(hits))
        accuracy = float((test_logits.argmax(1) == y_test).double().mean())
        size, gap = float(sets.sum(1).double().mean()), 100 * max(abs(c - args.coverage) for c in per_class)
        print(f"seed {seed}: accuracy {accuracy:.4f}, T = {calibration.temperature:.3f}, "
              f"mondrian={calibration.conformal.mondrian}; coverage {float(hits.double().mean()):.4f} "
              f"[{low:.4f}, {high:.4f}] (target {args.coverage}); mean set size {size:.3f}; per class "
              f"{min(per_class):.3f} to {max(per_class):.3f} (largest gap {gap:.1f} points); "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
        print("  per class: " + ", ".join(f"{c:.3f}" for c in per_class))


if __name__ == "__main__":
    main()
