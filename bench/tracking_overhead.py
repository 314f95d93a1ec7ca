"""What `--log tensorboard,mlflow` costs a demo training run: the same run with and without, alternated.

The runs train on the bundled Fashion-MNIST demo (what `make demo` trains) in this process,
alternating without / with both trackers; best of each and the ratio with / without are printed.
On a shared machine that ratio measures the neighbours as much as the trackers, so the tracked
runs also count the seconds spent in tracker code itself (building them, which imports the
libraries and connects to the store; their hooks at the start and each epoch; the final figures,
hparams and artifact upload): that figure, over the run's time, is the overhead that does not
depend on the machine's other jobs. The MLflow store (SQLite, MLflow 3's default) is created once
before timing, as it is for anyone who has tracked a run before; its creation is printed apart.

Usage:
    python bench/tracking_overhead.py                                   # the demo: 1 + 6 epochs
    python bench/tracking_overhead.py --epochs 1 --sample 0.1 --repeats 2   # shorter (a larger share)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import alternate

from visiontune.config import DataConfig, FinetuneConfig, RunConfig, TrainConfig
from visiontune.data.demo import export_dataset
from visiontune.training.mlflow_log import MLflowLogger
from visiontune.training.pipeline import train
from visiontune.training.tensorboard_log import TensorBoardLogger
from visiontune.training.trackers import Tracking

SPENT = [0.0]  # seconds inside tracker code during the current run
TIMED = {
    Tracking: ("__init__", "finish"),
    TensorBoardLogger: ("start", "before_fit", "after_epoch"),
    MLflowLogger: ("start", "after_epoch"),
}  # fmt: skip  (each tracker's finish runs inside Tracking.finish)


def timed(method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            SPENT[0] += time.perf_counter() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="train --epochs (default: the demo's)")
    parser.add_argument("--sample", type=float, default=1.0, help="train --sample (default: all the demo)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="copy the first untracked run folder here")
    args = parser.parse_args()
    for cls, names in TIMED.items():
        for name in names:
            setattr(cls, name, timed(getattr(cls, name)))
    with tempfile.TemporaryDirectory(prefix="visiontune-bench-") as tmp:
        root = Path(tmp)
        export_dataset("fashion-mnist", root / "demo")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        os.chdir(root)  # MLflow's artifacts (./mlruns) stay in the temporary folder
        imports = import_libraries()
        print(f"importing mlflow and tensorboard (once per process, before timing): {imports:.2f} s")
        print(f"creating the MLflow store (once, before timing): {create_store():.1f} s")
        finetune = FinetuneConfig() if args.epochs is None else FinetuneConfig(epochs=args.epochs)
        base = RunConfig(DataConfig(source=str(root / "demo"), sample=args.sample), finetune=finetune)
        counter, shares = iter(range(1000)), []

        def run(log: tuple[str, ...]) -> float:
            config = base.replace("train", log=log)
            SPENT[0] = 0.0
            started = time.perf_counter()
            index = next(counter)
            train(dataclasses.replace(config, out=str(root / f"run{index}")))
            seconds = time.perf_counter() - started
            if args.keep and not log and not args.keep.exists():
                shutil.copytree(root / f"run{index}", args.keep)
            if log:
                shares.append((SPENT[0], seconds))
            print(f"  {'with' if log else 'without'} trackers: {seconds:.1f} s"
                  + (f" ({SPENT[0]:.2f} s in tracker code)" if log else ""), flush=True)  # fmt: skip
            return seconds

        plain, tracked = alternate(args.repeats, lambda: run(()), lambda: run(("tensorboard", "mlflow")))
    best_plain, best_tracked = min(plain), min(tracked)
    print(f"without --log: {best_plain:.1f} s (runs: {', '.join(f'{s:.1f}' for s in plain)})")
    print(f"with --log tensorboard,mlflow: {best_tracked:.1f} s (runs: {', '.join(f'{s:.1f}' for s in tracked)})")
    print(f"ratio with / without (best runs): {best_tracked / best_plain:.3f}x")
    for spent, seconds in shares:
        total = spent + imports  # what a fresh `visiontune train --log ...` process adds
        share = f"{total / seconds:.2%} of the run"
        print(f"tracker code {spent:.2f} s + imports {imports:.2f} s of {seconds:.1f} s = {share}")


def import_libraries() -> float:
    """Seconds to import what the trackers import: a fresh process pays them once."""
    started = time.perf_counter()
    import mlflow  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401
    from mlflow.entities import Metric  # noqa: F401

    return time.perf_counter() - started


def create_store() -> float:
    """Seconds MLflow takes to create its SQLite store (its schema migrations)."""
    import mlflow

    started = time.perf_counter()
    mlflow.MlflowClient().search_experiments()
    return time.perf_counter() - started


if __name__ == "__main__":
    assert TrainConfig().log == ()  # the reference really tracks nothing
    main()
