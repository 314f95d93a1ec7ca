"""How fast is `inspect_data`? Cold (empty file-info cache), warm (cached), and a plain reference.

The reference is what a careful script would do without visiontune: one thread, read each file,
sha256 it, decode it with PIL. `inspect_data` does more per file (header, RGB conversion, pHash,
thumbnail, duplicate search, split, grids), so "cold / reference" shows what the parallel scan buys
on this machine, and "warm / cold" what the SQLite cache buys on a second run.

Usage:
    python bench/inspect_speed.py                 # exports the full 70,000-image Fashion-MNIST first
    python bench/inspect_speed.py --data DIR      # any folder `visiontune inspect` accepts
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from visiontune.data.audit import inspect_data
from visiontune.data.demo import export_dataset
from visiontune.data.images import is_image_file
from visiontune.system import available_cpus


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))


def read_all(paths: list[Path]) -> int:
    """Read every file once so all timings below start with the files in the OS page cache."""
    return sum(len(p.read_bytes()) for p in paths)


def reference(paths: list[Path]) -> float:
    """Single-threaded read + sha256 + full PIL decode; returns seconds."""
    start = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    return time.perf_counter() - start


def timed_inspect(data: Path, out_dir: Path) -> tuple[float, int]:
    start = time.perf_counter()
    report = inspect_data(data, out_dir=out_dir)
    return time.perf_counter() - start, report.num_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="data folder; default: export the full Fashion-MNIST to a temp dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vt-bench-") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "fashion-mnist"
            start = time.perf_counter()
            counts = export_dataset("fashion-mnist", data, full=True)
            print(f"exported {sum(counts.values())} images to {data} in {time.perf_counter() - start:.1f}s")
        run(data, Path(tmp))


def run(data: Path, tmp: Path) -> None:
    paths = image_files(data)
    size = read_all(paths)
    print(
        f"{len(paths)} image files, {size / 1e6:.1f} MB; {available_cpus()} CPUs; Python {sys.version.split()[0]};"
        f" {platform.platform()}"
    )
    os.environ["VISIONTUNE_CACHE_DIR"] = str(tmp / "cache")  # fresh, empty file-info cache
    cold, n = timed_inspect(data, tmp / "out-cold")
    warm, _ = timed_inspect(data, tmp / "out-warm")
    ref = reference(paths)
    rates = {"inspect_data cold": n / cold, "inspect_data warm": n / warm, "reference (1 thread)": len(paths) / ref}
    for name, seconds in zip(rates, (cold, warm, ref), strict=True):
        print(f"{name:<22} {seconds:8.2f} s  {rates[name]:9.0f} images/s")
    cold_rate, warm_rate, ref_rate = rates.values()
    print(f"ratio cold / reference: {cold_rate / ref_rate:.2f}x;  warm / cold: {warm_rate / cold_rate:.2f}x")


if __name__ == "__main__":
    main()
