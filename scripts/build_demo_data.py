"""Build the demo subset shipped in the package from Debian's dataset-fashion-mnist.

Run once (the output is committed): `.venv/bin/python scripts/build_demo_data.py`.
300 train + 100 test images per class, chosen with seed 0 from the official train and test sets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from visiontune.data.demo import DEBIAN_DIR, FASHION_MNIST_CLASSES, SUBSET_FILE, load_full

OUT = Path(__file__).resolve().parents[1] / "src" / "visiontune" / "data" / "assets" / SUBSET_FILE


def stratified_subset(
    images: np.ndarray, labels: np.ndarray, per_class: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` images of every class, chosen by a seeded generator and kept in the original order."""
    rng = np.random.default_rng(seed)
    picks = [np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)) for c in np.unique(labels)]
    keep = np.sort(np.concatenate(picks))
    return images[keep], labels[keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    full = load_full(args.source)
    train_x, train_y = stratified_subset(
        full["train_images"], full["train_labels"], args.train_per_class, seed=args.seed
    )
    test_x, test_y = stratified_subset(
        full["test_images"], full["test_labels"], args.test_per_class, seed=args.seed + 1
    )
    np.savez_compressed(
        OUT,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=np.array(FASHION_MNIST_CLASSES),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {len(train_x)} train + {len(test_x)} test images")


if __name__ == "__main__":
    main()
