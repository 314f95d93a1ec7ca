"""Decode once: epoch time and data-wait share with and without the decoded-image cache, on photo-sized JPEGs.

2,000 JPEGs of about 400x533 (crops and rescales of the scikit-image photos, one class per photo)
go through the real Trainer at 128 px, batch 64: one frozen epoch (only the head learns, so the
data path weighs most; with --unfrozen also one with every layer learning), validation included.
`plain` decodes every JPEG every epoch (decode_once=False); `cached` first fills the cache (timed
on its own: a one-off per data set) and then reads it. The two alternate, best run kept, and the ratio is printed.

Usage:
    python bench/decode_once.py                 # 2,000 JPEGs, 128 px, 2 repeats
    python bench/decode_once.py --images 400 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as photos

from visiontune.config import AugmentConfig, FinetuneConfig, LoaderConfig
from visiontune.data.datamodule import DataModule
from visiontune.data.dataset import load_data
from visiontune.data.transforms import Preprocessing
from visiontune.models import create_classifier
from visiontune.training.events import Callback
from visiontune.training.trainer import Trainer

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera")


class Rows(Callback):
    """Each epoch's row, plus the CPU seconds the process spent on it (all threads): unlike wall time, a
    busy shared machine doesn't inflate them."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.cpu = 0.0

    def before_epoch(self, trainer: Trainer) -> None:
        self.cpu = time.process_time()

    def after_epoch(self, trainer: Trainer, row: dict) -> None:
        self.rows.append({**row, "cpu_s": time.process_time() - self.cpu})


def make_photos(root: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs, 400x533 or 533x400: random crops (30-100% of the side) of real photos, rescaled."""
    rng = np.random.default_rng(seed)
    sources = {name: getattr(photos, name)() for name in PHOTOS}
    for k in range(count):
        name = PHOTOS[k % len(PHOTOS)]
        image = sources[name]
        h, w = image.shape[:2]
        side = rng.uniform(0.3, 1.0)
        ch, cw = int(h * side), int(w * side)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        size = (400, 533) if rng.random() < 0.5 else (533, 400)
        crop = Image.fromarray(image[top : top + ch, left : left + cw]).convert("RGB").resize(size, Image.BICUBIC)
        (root / name).mkdir(parents=True, exist_ok=True)
        crop.save(root / name / f"{k:05d}.jpg", quality=90)
    return root


def one_run(root: Path, *, cached: bool, size: int, cache_dir: Path, unfrozen: bool) -> dict[str, float]:
    os.environ["VISIONTUNE_CACHE_DIR"] = str(cache_dir)
    data = load_data(root)
    pre = Preprocessing(image_size=size, mean=(0.5,) * 3, std=(0.5,) * 3)
    dm = DataModule(data, pre, AugmentConfig.preset("standard"), LoaderConfig(batch_size=64), decode_once=cached)
    started, cpu = time.perf_counter(), time.process_time()
    dm.dataset("train"), dm.dataset("valid", train=False)  # the fill (a no-op without the cache)
    fill, fill_cpu = time.perf_counter() - started, time.process_time() - cpu
    torch.manual_seed(0)
    model = create_classifier("efficientnet_lite0", len(data.classes), image_size=size)
    rows = Rows()
    trainer = Trainer(model, dm, FinetuneConfig(), callbacks=[rows])
    trainer.fine_tune(epochs=int(unfrozen), freeze_epochs=1, lr=2e-3)
    result = {"fill_s": fill, "fill_cpu_s": fill_cpu}
    for row in rows.rows:
        phase = row["phase"]
        result |= {
            f"{phase}_s": row["time_s"],
            f"{phase}_wait_pct": row["data_wait_pct"],
            f"{phase}_cpu_s": row["cpu_s"],
        }
    return result | {"valid_accuracy": rows.rows[-1]["valid_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--unfrozen", action="store_true", help="also an epoch with every layer learning")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        root = make_photos(Path(tmp) / "photos", args.images)
        results: dict[str, list[dict[str, float]]] = {"plain": [], "cached": []}
        for repeat in range(args.repeats):
            for side in ("plain", "cached"):
                cache_dir = Path(tmp) / f"cache-{repeat}"  # a fresh cache each repeat: the fill is timed
                cached = side == "cached"
                run = one_run(root, cached=cached, size=args.size, cache_dir=cache_dir, unfrozen=args.unfrozen)
                results[side].append(run)
                print(side, {k: round(v, 3) for k, v in results[side][-1].items()}, flush=True)
    print(f"\n{args.images} JPEGs (~400x533), {args.size} px, batch 64, load average {os.getloadavg()[0]:.1f}")
    phases = ("frozen", "unfrozen") if args.unfrozen else ("frozen",)
    print("side    fill s (CPU s)  " + "  ".join(f"{p} epoch: wall s (data wait %), CPU s" for p in phases))
    best = {}
    for side, runs in results.items():
        best[side] = b = min(runs, key=lambda r: sum(r[f"{p}_cpu_s"] for p in phases))
        cells = "  ".join(f"{b[f'{p}_s']:10.1f} ({b[f'{p}_wait_pct']:4.1f}%), {b[f'{p}_cpu_s']:7.1f}" for p in phases)
        print(f"{side:<7} {b['fill_s']:6.1f} ({b['fill_cpu_s']:5.1f})  {cells}")
    for phase in phases:
        wall = best["cached"][f"{phase}_s"] / best["plain"][f"{phase}_s"]
        cpu = best["cached"][f"{phase}_cpu_s"] / best["plain"][f"{phase}_cpu_s"]
        print(f"{phase} epoch cached / plain: wall {wall:.2f}x, CPU {cpu:.2f}x")


if __name__ == "__main__":
    main()
