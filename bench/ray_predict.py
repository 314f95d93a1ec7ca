"""`predict --ray` against single-process `predict`: the same 2,000 images, the same bundle, this machine.

The files: 2,000 of the bundled Fashion-MNIST PNGs. The model: a 10-class efficientnet_lite0
bundle at 112 px (the size `visiontune train demo` picks for these 28 px images; ImageNet backbone
weights, fresh head: only speed matters here).

- reference: `Predictor.predict(paths)`, what `visiontune predict` runs (its own batch size, every
  core's threads in one process);
- ours: `predict_on_ray` on a local Ray instance of this machine's cores, 1 worker with every core
  (`--num-cpus-per-worker 2`) and 2 workers with one core each, CPU workers decoding their own
  batches one forward pass ahead (predict.distributed.Decoding), writing Parquet shards.

For the paper estimate in RESULTS.md the script also times what a GPU node's CPUs would do per
image: reading, decoding and resizing 200 photos (320-640 px JPEGs, as bench/predict_throughput.py
makes them) to 224 px with the pipeline's own decode step, on one core.

Each Ray job is timed twice: end to end (the workers' start-up, loading torch and the model, is
paid once per job, a few seconds) and in steady state, from the first batch back to the last.
Ray's own start (`ray.init`, once per machine in real use) is not in either. Runs alternate
(reference, 1 worker, 2 workers, ...) and the best of each is kept: the machine is shared.

`--threads 1` runs every model process single-threaded: on a machine whose cores are shared with
other jobs (load above the core count), two spinning OpenMP threads in one process measured 5-8x
slower than one thread (4-6 against 33-37 images/s, 2026-12-01), which would swamp both sides.

Usage:
    python bench/ray_predict.py                       # 2,000 images, 3 rounds
    python bench/ray_predict.py --threads 1 --repeats 2
    python bench/ray_predict.py --images 500 --repeats 1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch
from common import print_ratio, rates
from predict_throughput import write_photos

from visiontune.bundle import BundleMeta, save_bundle
from visiontune.data.demo import export_dataset
from visiontune.models import create_classifier
from visiontune.predict import Predictor
from visiontune.predict.distributed import RayOptions, decode_batch, predict_on_ray
from visiontune.system import available_cpus


def single_process(predictor: Predictor, paths: list[str]) -> float:
    start = time.perf_counter()
    predictor.predict(paths)
    return len(paths) / (time.perf_counter() - start)


def on_ray(bundle: Path, paths: list[str], out: Path, options: RayOptions) -> tuple[float, float]:
    """(end-to-end, steady-state) images/s of one job into a fresh `out`."""
    shutil.rmtree(out, ignore_errors=True)
    arrivals: list[tuple[float, int]] = []
    start = time.perf_counter()
    predict_on_ray(str(bundle), paths, str(out), options=options,
                   progress=lambda n: arrivals.append((time.perf_counter(), n)))  # fmt: skip
    end = time.perf_counter()
    first_at, first_n = arrivals[0]
    steady = (len(paths) - first_n) / (end - first_at) if end > first_at else float("nan")
    return len(paths) / (end - start), steady


def decode_ms_per_photo(folder: Path, count: int = 200) -> float:
    """Best of 3: milliseconds to read, decode and resize one photo to 224 px, one thread."""
    torch.set_num_threads(1)
    paths = [str(p) for p in write_photos(folder, count)]
    preprocessing = create_classifier("efficientnet_lite0", 10, image_size=224).preprocessing
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        decode_batch({"path": paths}, preprocessing=preprocessing, max_pixels=10**8, digest=False)
        best = min(best, (time.perf_counter() - start) / count * 1000)
    torch.set_num_threads(available_cpus())
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per model process (default: cores)")
    args = parser.parse_args()
    cores = available_cpus()
    threads = args.threads or cores
    torch.set_num_threads(threads)  # the single-process side; a Ray worker gets one per CPU it holds
    torch.manual_seed(0)
    model = create_classifier("efficientnet_lite0", 10, image_size=112)
    with tempfile.TemporaryDirectory() as tmp:
        export_dataset("fashion-mnist", Path(tmp) / "fm")
        paths = [str(p) for p in sorted((Path(tmp) / "fm").rglob("*.png"))[: args.images]]
        meta = BundleMeta(arch=model.arch, classes=[str(i) for i in range(10)], preprocessing=model.preprocessing)
        bundle = save_bundle(Path(tmp) / "bundle", model, meta)
        predictor = Predictor.load(bundle, device="cpu")
        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
        print(f"ray.init (local, {cores} CPUs): {time.perf_counter() - started:.1f} s (not counted below)")
        layouts = {1: RayOptions(concurrency=1, num_cpus_per_worker=threads), 2: RayOptions(concurrency=2)}
        single_process(predictor, paths[:64])  # warm-up
        reference: list[float] = []
        total: dict[int, list[float]] = {1: [], 2: []}
        steady: dict[int, list[float]] = {1: [], 2: []}
        for round_ in range(args.repeats):
            reference.append(single_process(predictor, paths))
            print(f"round {round_ + 1}: single-process {reference[-1]:.1f} images/s", flush=True)
            for workers, options in layouts.items():
                end_to_end, rate = on_ray(bundle, paths, Path(tmp) / "out", options)
                total[workers].append(end_to_end)
                steady[workers].append(rate)
                print(f"round {round_ + 1}: ray, {workers} worker(s): {end_to_end:.1f} end to end, {rate:.1f} steady",
                      flush=True)  # fmt: skip
        ray.shutdown()
        decode_ms = decode_ms_per_photo(Path(tmp) / "photos")
    print(f"device: CPU ({cores} cores, shared with other sessions); torch {torch.__version__}, ray {ray.__version__}")
    print(f"efficientnet_lite0 bundle, 112 px; {len(paths)} Fashion-MNIST PNGs; best of {args.repeats} alternated runs;"
          f" {threads} torch thread(s) in the single process and in the 1-worker job, 1 per worker with 2")  # fmt: skip
    for workers in (1, 2):
        print(f"--- predict --ray, {workers} worker(s): end to end {max(total[workers]):.1f} images/s "
              f"(runs: {rates(total[workers])})")  # fmt: skip
        print_ratio(("single-process predict", reference), (f"ray, {workers} worker(s), steady", steady[workers]))
    overhead = 1 - max(steady[1]) / max(reference)
    print(f"Ray overhead at 1 worker, steady state: {overhead:.1%} (target: within 15%)")
    print(f"decoding for a GPU worker: {decode_ms:.2f} ms per 320-640 px JPEG photo to 224 px, one core")


if __name__ == "__main__":
    main()
