"""The CPU inference batch: `system.inference_batch_size`'s choice against the fastest batch, by image size.

Part 1, the model alone: efficientnet_lite0 (channels-last, inference mode, random pixels) at
several image sizes, every power-of-two batch from 1 to 256, rounds alternating over the batches,
each batch's best round kept. For each size it prints the fastest batch, the rule's batch and
the former rule's (4 images per core at any size), each with its images/s and share of the best.

Part 2, what users run: `Predictor.predict` over image files with a bundle at 96 px (1,000
Fashion-MNIST PNGs, the demo's size) and at 224 px (1,000 photo crops of 320-640 px), in the
rule's batch (the default) against the former rule's batch, runs alternating.

Usage:
    python bench/inference_batch.py
    python bench/inference_batch.py --sizes 64,96 --threads 1 --skip-predict
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import torch
from common import alternate, print_ratio
from predict_throughput import write_photos

from visiontune.bundle import BundleMeta, save_bundle
from visiontune.data.demo import export_dataset
from visiontune.models import create_classifier
from visiontune.predict import Predictor
from visiontune.system import available_cpus, inference_batch_size

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def sweep(side: int, threads: int, rounds: int, pixels_per_run: int) -> dict[int, float]:
    """Best images/s of each batch at `side` px over `rounds` rounds (each run covers about `pixels_per_run`)."""
    model = create_classifier("efficientnet_lite0", 10, image_size=side, pretrained=False).eval()
    model = model.to(memory_format=torch.channels_last)
    best: dict[int, float] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for batch in BATCHES:
                x = torch.randn(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
                model(x)  # warm-up: allocations and kernel choice for this shape
                steps = max(2, pixels_per_run // (batch * side * side))
                start = time.perf_counter()
                for _ in range(steps):
                    model(x)
                rate = steps * batch / (time.perf_counter() - start)
                best[batch] = max(best.get(batch, 0.0), rate)
    return best


def predict_rate(predictor: Predictor, paths: list[Path], batch: int) -> float:
    predictor.predict(paths[:batch], batch_size=batch)  # warm-up
    start = time.perf_counter()
    predictor.predict(paths, batch_size=batch)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,96,160,224")
    parser.add_argument("--threads", type=int, default=available_cpus())
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-predict", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    former = 4 * args.threads
    print(f"device: CPU ({available_cpus()} cores), {args.threads} threads; torch {torch.__version__}")
    print("size | fastest batch (images/s) | rule: batch, images/s, of best | former (4 per thread): of best")
    for side in (int(s) for s in args.sizes.split(",")):
        rates = sweep(side, args.threads, args.rounds, pixels_per_run=6_000_000)
        fastest = max(rates, key=rates.__getitem__)
        rule = inference_batch_size("cpu", (side, side), args.threads)
        share = {b: rates[b] / rates[fastest] for b in rates}
        every = ", ".join(f"{b}: {r:.0f}" for b, r in rates.items())
        print(
            f"{side} px | {fastest} ({rates[fastest]:.1f}) | {rule}, {rates[rule]:.1f}, {share[rule]:.2f}"
            f" | {former}, {rates[former]:.1f}, {share[former]:.2f}  [all: {every}]",
            flush=True,
        )
    if args.skip_predict:
        return
    with tempfile.TemporaryDirectory() as tmp:
        export_dataset("fashion-mnist", Path(tmp) / "fm")
        cases = [
            ("1,000 Fashion-MNIST PNGs, bundle at 96 px", 96, sorted((Path(tmp) / "fm").rglob("*.png"))[: args.images]),
            ("1,000 photos of 320-640 px, bundle at 224 px", 224, write_photos(Path(tmp) / "photos", args.images)),
        ]
        for label, side, paths in cases:
            model = create_classifier("efficientnet_lite0", 10, image_size=side)
            meta = BundleMeta(arch=model.arch, classes=[str(i) for i in range(10)], preprocessing=model.preprocessing)
            predictor = Predictor.load(save_bundle(Path(tmp) / f"bundle{side}", model, meta), device="cpu")
            rule = inference_batch_size("cpu", (side, side), torch.get_num_threads())
            print(f"\nPredictor.predict, {label}: batch {former} (former rule) against {rule} (the rule)")
            runs = [functools.partial(predict_rate, predictor, paths, b) for b in (former, rule)]
            formers, rules = alternate(args.repeats, *runs)
            print_ratio((f"batch {former}, former rule", formers), (f"batch {rule}, the rule (default)", rules))


if __name__ == "__main__":
    main()
