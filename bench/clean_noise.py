"""Label cleaning on known noise: flip a share of the demo's training labels, see what `clean` finds and what it buys.

For each noise rate (seeded): a random `rate` of the bundled Fashion-MNIST subset's 3,000 training
images get a label drawn uniformly from the other nine classes (the 1,000 test images keep theirs).
The images are not copied: CSVs beside a link to the exported folder carry the labels.

1. `clean` on the noisy training images: precision and recall of the flagged label errors against
   the flips, at cleanlab's estimated-noise cut-off (the top k, k = its estimate of wrong labels)
   and for its own flagged set (confident learning's pruning), and the precision of the top 50;
   also how often the suggested label is the true one.
2. `clean --apply-suggestions --min-score S` writes corrections.csv beside the CSVs.
3. A default `visiontune train` (fine-tuning, 7 epochs) on (a) the noisy labels, (b) the noisy
   labels with those corrections applied, (c) the true labels (once, shared by every rate):
   test accuracy on the untouched test images. The reference is (c); the ratio printed is the share
   of the (a)-(c) gap that (b) recovers.

Usage:
    python bench/clean_noise.py                           # 20% then 5% noise, all three trainings
    python bench/clean_noise.py --rates 0.2 --no-train    # detection only (a minute with cached features)

Results are appended, one JSON object per line, to --log (default clean_noise.jsonl in --work), so an
interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from visiontune.cleaning import apply_suggestions, clean
from visiontune.config import DataConfig, RunConfig, TrainConfig
from visiontune.data.demo import export_dataset
from visiontune.data.sources import from_folder, relative_posix
from visiontune.training.pipeline import train


def flip_labels(labels: list[str], classes: list[str], rate: float, seed: int) -> tuple[list[str], set[int]]:
    """`labels` with round(rate * N) of them, chosen at random, changed to another class at random."""
    rng = np.random.default_rng(seed)
    flipped = set(rng.choice(len(labels), size=round(rate * len(labels)), replace=False).tolist())
    noisy = list(labels)
    for i in sorted(flipped):
        others = [c for c in classes if c != labels[i]]
        noisy[i] = others[rng.integers(len(others))]
    return noisy, flipped


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)


def detection(result, truth: set[str]) -> dict[str, float]:
    """Precision / recall of the flagged label errors against the flipped paths."""
    ranked = [result.relative(i.path) for i in result.issues if i.kind == "label_error"]
    k = result.health.estimated_errors
    cut = set(ranked[:k])
    flagged = set(ranked)
    hits_top = sum(p in truth for p in ranked[:50])
    return {
        "flipped": len(truth),
        "estimated_errors": k,
        "precision_at_estimate": len(cut & truth) / max(len(cut), 1),
        "recall_at_estimate": len(cut & truth) / max(len(truth), 1),
        "flagged": len(flagged),
        "precision_flagged": len(flagged & truth) / max(len(flagged), 1),
        "recall_flagged": len(flagged & truth) / max(len(truth), 1),
        "precision_top50": hits_top / max(min(50, len(ranked)), 1),
    }


def train_accuracy(source: Path, out: Path, *, corrections: str, method: str) -> float:
    config = RunConfig(
        DataConfig(source=str(source), corrections=corrections), train=TrainConfig(method=method), out=str(out)
    )
    started = time.perf_counter()
    result = train(config, overwrite=True)
    print(f"  trained {out.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return float(result.metrics["test_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="0.2,0.05")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-score", type=float, default=0.9)
    parser.add_argument("--work", type=Path, default=Path("bench-clean-noise"))
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--method", default="finetune", help="train's method: finetune (the default) or features")
    parser.add_argument("--train-only", action="store_true", help="reuse an earlier run's CSVs and corrections.csv")
    parser.add_argument("--labels", default="clean,noisy,suggestions", help="which trainings, in this order")
    args = parser.parse_args()
    work = args.work.resolve()
    log_path = args.log or work / "clean_noise.jsonl"
    demo = work / "demo"
    if not (demo / "train").is_dir():
        export_dataset("fashion-mnist", demo)
    scan = from_folder(demo)
    train_rows = [s for s in scan.samples if s.split == "train"]
    test_rows = [s for s in scan.samples if s.split == "test"]
    classes = scan.classes

    def record(entry: dict) -> None:
        print(json.dumps(entry), flush=True)
        with log_path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def rows_for(folder: Path, labels: list[str]) -> tuple[list, list]:
        (folder / "images").unlink(missing_ok=True)
        (folder / "images").symlink_to(demo, target_is_directory=True)
        train_part = [
            (f"images/{relative_posix(s.path, demo)}", label, "train")
            for s, label in zip(train_rows, labels, strict=True)
        ]
        test_part = [(f"images/{relative_posix(s.path, demo)}", s.label, "test") for s in test_rows]
        return train_part, test_part

    def detect(folder: Path, rate: float, noisy: list[str], flipped: set[int]) -> None:
        train_part, test_part = rows_for(folder, noisy)
        write_csv(folder / "train.csv", train_part)
        write_csv(folder / "all.csv", train_part + test_part)
        truth = {train_part[i][0] for i in flipped}
        true_of = {row[0]: label for row, label in zip(train_part, true_labels, strict=True)}
        started = time.perf_counter()
        result = clean(folder / "train.csv", out_dir=folder / "clean")
        seconds = time.perf_counter() - started
        written = apply_suggestions(result, min_score=args.min_score)
        right = sum(c.label == true_of[c.path] for c in written)
        suggestions = [i for i in result.issues if i.kind == "label_error" and result.relative(i.path) in truth]
        record({"rate": rate, "seed": args.seed, "clean_s": round(seconds, 1), **detection(result, truth),
                "suggestion_right": sum(i.suggested == true_of[result.relative(i.path)] for i in suggestions)
                / max(len(suggestions), 1),
                "auto_corrections": len(written), "auto_corrections_right": right,
                "auto_corrections_fixing_a_flip": sum(c.path in truth and c.label == true_of[c.path] for c in written),
                "min_score": args.min_score})  # fmt: skip

    def train_all(folder: Path, rate: float) -> None:
        runs = work / "runs" / args.method
        for labels in args.labels.split(","):
            if labels == "clean":
                clean_csv = work / "clean_labels" / "all.csv"
                if (runs / "clean" / "results.json").is_file():
                    continue  # shared by every rate
                clean_csv.parent.mkdir(parents=True, exist_ok=True)
                write_csv(clean_csv, [row for part in rows_for(clean_csv.parent, true_labels) for row in part])
                source, fix, out = clean_csv, "none", runs / "clean"
            else:
                fix = "none" if labels == "noisy" else str(folder / "corrections.csv")
                source, out = folder / "all.csv", runs / f"{folder.name}-{labels}"
            accuracy = train_accuracy(source, out, corrections=fix, method=args.method)
            record({"rate": None if labels == "clean" else rate, "labels": labels, "method": args.method,
                    "test_accuracy": accuracy})  # fmt: skip

    true_labels = [s.label for s in train_rows]
    for rate in [float(r) for r in args.rates.split(",")]:
        folder = work / f"noise{round(rate * 100):02d}"
        noisy, flipped = flip_labels(true_labels, classes, rate, args.seed)
        if not args.train_only:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "corrections.csv").unlink(missing_ok=True)
            detect(folder, rate, noisy, flipped)
        if not args.no_train:
            train_all(folder, rate)


if __name__ == "__main__":
    main()
