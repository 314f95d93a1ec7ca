"""--budget against the clock and against accuracy: what each budget plans, how long it takes, how well it scores.

For each budget and seed, the real command a user runs, with a fresh decode cache (nothing from an
earlier run helps): `visiontune train DEMO --budget B --seed S --out RUN --quiet`, wall time of the
whole process against the budget. Each bundle is then scored on all 10,000 images of Fashion-MNIST's
t10k split (Debian's `dataset-fashion-mnist`; the demo's 1,000 test images are among them, none of
its training images): on 1,000 images one run moves about a point by chance, on 10,000 about 0.3.
For an ensemble the members are also scored alone, each against the averaged whole: the reference
an ensemble must beat is its own members, trained in the same run.

Usage:
    python bench/budget_accuracy.py                          # 2, 5 and 10 minutes, seeds 0 and 1
    python bench/budget_accuracy.py --budgets 20m --seeds 0  # one long budget
    python bench/budget_accuracy.py --score runs/a runs/b    # only score existing runs on t10k
    python bench/budget_accuracy.py --budgets 20m --seeds 1 --members 1  # the budget's one-model reference
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from visiontune.bundle import load_bundle
from visiontune.config import parse_duration
from visiontune.data.demo import FASHION_MNIST_CLASSES, load_full
from visiontune.models import members_of
from visiontune.predict import Predictor

BIN = Path(sys.executable).parent


def write_t10k(folder: Path) -> list[Path]:
    """The 10,000 t10k images as PNG class folders (written once)."""
    from PIL import Image

    if not folder.is_dir():
        arrays = load_full()
        for index, (image, label) in enumerate(zip(arrays["test_images"], arrays["test_labels"], strict=True)):
            target = folder / FASHION_MNIST_CLASSES[int(label)]
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(target / f"{index:05d}.png")
    return sorted(folder.rglob("*.png"))


def score(run: Path, files: list[Path]) -> dict[str, object]:
    """t10k accuracy of the bundle (arg-max of the members' mean probability) and of each member alone."""
    model, meta = load_bundle(run / "model")
    labels = torch.tensor([meta.classes.index(f.parent.name) for f in files])
    probs = []
    for member in members_of(model):
        predictor = Predictor(member, meta.classes, meta.preprocessing, device="cpu")
        probs.append(torch.as_tensor(predictor.predict_proba([str(f) for f in files])))
    alone = [float((p.argmax(1) == labels).float().mean()) for p in probs]
    joint = float((torch.stack(probs).mean(0).argmax(1) == labels).float().mean())
    return {"t10k": round(joint, 4), "members_alone": [round(a, 4) for a in alone]}


def train(demo: Path, budget: str, seed: int, out: Path, cache: Path, members: int | None) -> dict[str, object]:
    """One `visiontune train --budget` as a user runs it (`--members` only when given); its plan, wall time, score."""
    command = [str(BIN / "visiontune"), "train", str(demo), "--budget", budget, "--seed", str(seed),
               "--out", str(out), "--overwrite"]  # fmt: skip
    if members is not None:
        command += ["--members", str(members)]
    started = time.perf_counter()
    env = {**os.environ, "VISIONTUNE_CACHE_DIR": str(cache)}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    plan = next((line for line in proc.stderr.splitlines() if line.startswith("budget ")), "")
    results = json.loads((out / "results.json").read_text())
    return {
        "budget": budget,
        "seed": seed,
        "plan": plan,
        "wall_s": round(wall, 1),
        "of_budget": round(wall / parse_duration(budget), 3),
        "demo_test": results["metrics"].get("test_accuracy"),
        "members": len(results.get("members", [])) or 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="2m,5m,10m")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "visiontune-budget-bench")
    parser.add_argument("--score", nargs="*", type=Path, help="only score these run folders on t10k")
    parser.add_argument("--members", type=int, help="pass --members N (default: what the budget plans)")
    args = parser.parse_args()
    files = write_t10k(args.work / "t10k")
    if args.score:
        for run in args.score:
            print(json.dumps({"run": str(run), **score(run, files)}), flush=True)
        return
    demo = args.work / "demo"
    if not demo.is_dir():
        subprocess.run([str(BIN / "visiontune"), "datasets", "export", "fashion-mnist", str(demo)], check=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for budget in args.budgets.split(","):  # seed-major: each budget's two runs at different times of day
            name = f"{budget}-s{seed}" + (f"-m{args.members}" if args.members is not None else "")
            row = train(demo, budget, seed, args.work / name, args.work / f"cache-{name}", args.members)
            row.update(score(args.work / name, files))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
