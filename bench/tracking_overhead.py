"""What `--log tensorboard,mlflow` costs a demo training run: the same run with and without, alternated.

Each run is a fresh `visiontune train` process on the bundled Fashion-MNIST demo (what `make
demo` trains), timed from start to exit, so the trackers' imports, the MLflow store's writes,
the final figures and the bundle upload all count. The MLflow store (SQLite, as MLflow 3 makes
by default) is created once before timing, as it is for anyone who has tracked a run before;
its first creation is timed and printed on its own. Best of each side; ratio with / without.

Usage:
    python bench/tracking_overhead.py                                   # the demo: 1 + 6 epochs
    python bench/tracking_overhead.py --epochs 2 --sample 0.5 --repeats 2   # shorter (a larger ratio)
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

from common import alternate

from visiontune.data.demo import export_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="train --epochs (default: the demo's)")
    parser.add_argument("--sample", type=float, default=None, help="train --sample (default: all the demo)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="visiontune-bench-") as tmp:
        root = Path(tmp)
        data = root / "demo"
        export_dataset("fashion-mnist", data)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
        print(f"creating the MLflow store (once, before timing): {create_store(env):.1f} s")
        extra = [*(["--epochs", str(args.epochs)] if args.epochs else []),
                 *(["--sample", str(args.sample)] if args.sample else [])]  # fmt: skip
        counter = iter(range(1000))

        def run(log: list[str]) -> float:
            out = root / f"run{next(counter)}"
            command = [sys.executable, "-m", "visiontune", "train", str(data), "--out", str(out), "--quiet"]
            started = time.perf_counter()
            subprocess.run([*command, *extra, *log], check=True, env=env, cwd=root, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
            inside = json.loads((out / "results.json").read_text())["elapsed_s"]
            print(f"  {'with' if log else 'without'} trackers: {seconds:.1f} s (pipeline {inside:.1f} s)", flush=True)
            return seconds

        plain, tracked = alternate(args.repeats, lambda: run([]), lambda: run(["--log", "tensorboard,mlflow"]))
    best_plain, best_tracked = min(plain), min(tracked)
    print(f"without --log: {best_plain:.1f} s (runs: {', '.join(f'{s:.1f}' for s in plain)})")
    print(f"with --log tensorboard,mlflow: {best_tracked:.1f} s (runs: {', '.join(f'{s:.1f}' for s in tracked)})")
    print(f"overhead: {best_tracked - best_plain:+.1f} s; ratio with / without: {best_tracked / best_plain:.3f}x")


def create_store(env: dict[str, str]) -> float:
    """Seconds MLflow takes to create its SQLite store (its schema migrations), in a process of its own."""
    code = "import mlflow; mlflow.MlflowClient().search_experiments()"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
