"""Load test of `visiontune serve` on loopback: throughput and latency with dynamic batching on and off.

Two real servers run side by side (`python -m visiontune serve`, uvicorn, one process each): one
with dynamic batching (`--max-batch 32 --max-wait-ms 5`, the defaults; the options here change them) and one without
(`--max-batch 1`: one forward pass per request). An asyncio httpx client in this process sends
`--requests` multipart uploads of real test images at each `--concurrency` (a fixed number of
requests in flight), alternating between the two servers, and reports requests/s, p50/p95/p99
latency and errors (which must be 0), plus the batch sizes the server saw (from /health).

Everything is bounded: the request count, and `--time-limit` seconds per run; only 127.0.0.1 is
contacted. On a small machine the client shares the CPU with the server, so absolute figures
are a floor; the on/off ratio is what the comparison is about.

Usage:
    python bench/serve_load.py --model runs/demo --data demo
    python bench/serve_load.py --model runs/demo --data demo --backend onnx --requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import numpy as np
from common import alternate, print_ratio
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 180.0


@dataclass
class Run:
    """One load run: per-request latencies (s) of the successes, errors, wall time, batching stats."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    passes: int = 0
    items: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


def payloads(data: Path | None, count: int = 200) -> list[tuple[str, bytes]]:
    """(name, PNG bytes) of real test images: DATA/test/*/*, or the bundled Fashion-MNIST test images."""
    if data is not None and (data / "test").is_dir():
        paths = sorted((data / "test").rglob("*.png"))
        return [(p.name, p.read_bytes()) for p in paths[:: max(1, len(paths) // count)][:count]]
    from visiontune.data.demo import load_subset

    out = []
    for k, array in enumerate(load_subset()["test_images"][:count]):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        out.append((f"fashion_{k}.png", buffer.getvalue()))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, backend: str, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "visiontune", "serve", model, "--port", str(port), "--backend", backend]
    command += ["--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("VISIONTUNE_API_KEY", None)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.terminate()
    raise SystemExit(f"the server did not start within {START_TIMEOUT:.0f} s")


async def load(url: str, images: list[tuple[str, bytes]], *, requests: int, concurrency: int, limit: float) -> Run:
    """`requests` uploads with `concurrency` in flight; stops at `limit` seconds whatever is left."""
    run = Run()
    counter = iter(range(requests))
    timeout = httpx.Timeout(60.0)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        before = (await client.get("/health")).json()["batching"]

        async def worker() -> None:
            for index in counter:
                name, data = images[index % len(images)]
                start = time.perf_counter()
                try:
                    response = await client.post("/predict", files={"file": (name, data, "image/png")})
                except httpx.HTTPError as exc:
                    run.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code == 200:
                    run.latencies.append(time.perf_counter() - start)
                else:
                    run.errors.append(f"{response.status_code}: {response.text[:200]}")

        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), limit)
        except TimeoutError:
            run.errors.append(f"time limit of {limit:.0f} s reached")
        run.seconds = time.perf_counter() - start
        after = (await client.get("/health")).json()["batching"]
    run.passes = after["forward_passes"] - before["forward_passes"]
    run.items = after["items"] - before["items"]
    return run


def report(label: str, concurrency: int, run: Run) -> None:
    mean_batch = run.items / run.passes if run.passes else 0.0
    print(
        f"| {label} | {concurrency} | {len(run.latencies):,} | {run.rate:7.1f} | {run.percentile(50):7.1f} | "
        f"{run.percentile(95):7.1f} | {run.percentile(99):7.1f} | {len(run.errors)} | {mean_batch:5.1f} |",
        flush=True,
    )
    if run.errors:
        print(f"  first error: {run.errors[0]}")


def measure(label: str, url: str, images: list, args: argparse.Namespace, concurrency: int, runs: list[Run]) -> float:
    """One bounded run against `url`, printed as a table row; returns requests/s."""
    run = asyncio.run(load(url, images, requests=args.requests, concurrency=concurrency, limit=args.time_limit))
    report(label, concurrency, run)
    runs.append(run)
    return run.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo", help="bundle, run folder or .onnx file")
    parser.add_argument("--data", type=Path, default=Path("demo"), help="images from DATA/test/ (else bundled ones)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--max-batch", type=int, default=32, help="the batching server's --max-batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the batching server's --max-wait-ms")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per run at most")
    args = parser.parse_args()

    images = payloads(args.data)
    print(f"{len(images)} images, {sum(len(d) for _, d in images) / len(images) / 1000:.1f} kB each on average")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    servers = {
        "batching off": start_server(args.model, args.backend, 1, 0.0),
        "batching on": start_server(args.model, args.backend, args.max_batch, args.max_wait_ms),
    }
    try:
        for _, url in servers.values():  # first passes allocate: not measured
            asyncio.run(load(url, images, requests=args.warmup, concurrency=8, limit=args.time_limit))
        print("| server | concurrency | requests ok | requests/s | p50 ms | p95 ms | p99 ms | errors | mean batch |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        runs: list[Run] = []
        for concurrency in args.concurrency:
            sides = [
                partial(measure, label, servers[label][1], images, args, concurrency, runs)
                for label in ("batching off", "batching on")
            ]
            off, on = alternate(args.repeats, *sides)
            print_ratio(
                (f"batching off, concurrency {concurrency}", off),
                (f"batching on, concurrency {concurrency}", on),
                "requests/s",
            )
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if any(run.errors for run in runs):
        raise SystemExit("some requests failed: see the errors above")


if __name__ == "__main__":
    main()
