"""The feature cache: a whole `--method features` run twice, the second finding every embedding cached.

Both runs are the same call, `train(config)` with method="features", the default backbone and
heads, on the bundled Fashion-MNIST subset (2,400 train, 600 valid, 1,000 test images), with a
fresh feature cache in a temporary folder. The file-info cache (hashes, headers) is filled
before either run, so the two differ only in feature extraction: the first embeds all 4,000
images, the second none. Each run writes its whole run folder and bundle; Python start-up and
imports are not timed.

Usage:
    python bench/features_cache.py                     # default heads (logreg, knn, linear)
    python bench/features_cache.py --heads logreg,rf,svm,knn,linear,mlp
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from visiontune.config import DataConfig, FeaturesConfig, ModelConfig, RunConfig, TrainConfig
from visiontune.data.dataset import load_data
from visiontune.data.demo import export_dataset
from visiontune.system import available_cpus


def run(data: Path, out: Path, heads: tuple[str, ...]) -> tuple[float, object]:
    from visiontune.training.pipeline import train

    config = RunConfig(
        DataConfig(source=str(data)),
        ModelConfig(),
        TrainConfig(method="features"),
        features=FeaturesConfig(heads=heads),
        out=str(out),
    )
    started = time.perf_counter()
    result = train(config)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", default="", help="comma list; default: the method's default heads")
    args = parser.parse_args()
    heads = tuple(h for h in args.heads.split(",") if h)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({available_cpus()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VISIONTUNE_CACHE_DIR"] = str(Path(tmp) / "cache")  # an empty cache: the first run is cold
        data = Path(tmp) / "fm"
        export_dataset("fashion-mnist", data)
        load_data(data, DataConfig())  # file infos cached for both runs
        first_s, first = run(data, Path(tmp) / "first", heads)
        second_s, second = run(data, Path(tmp) / "second", heads)
    print(f"device: {device}; torch {torch.__version__}")
    for name, seconds, result in (("first", first_s, first), ("second", second_s, second)):
        ext = result.extraction
        fit = sum(row["fit_s"] for row in result.heads)
        print(
            f"{name:6s} run: {seconds:6.1f} s  (extracted {ext['extracted']}, reused {ext['reused']}, "
            f"extraction {ext['seconds']:.1f} s, heads {fit:.1f} s); "
            f"test accuracy {result.metrics['test_accuracy']:.4f} ({result.best_head})"
        )
    for row in first.heads:
        print(
            f"  {row['head']:7s} valid {row['valid_accuracy']:.4f}  macro F1 {row['valid_macro_f1']:.4f}  "
            f"test {row['test_accuracy']:.4f}  fit {row['fit_s']:.1f} s"
        )
    print(f"ratio first / second: {first_s / second_s:.1f}x")


if __name__ == "__main__":
    main()
