"""Load test of `visiontune serve` on loopback: throughput and latency with dynamic batching on and off.

Two real servers run side by side (`python -m visiontune serve`, uvicorn, one process each): one
with dynamic batching (`--max-batch 32 --max-wait-ms 5`, the defaults; the options here change them) and one without
(`--max-batch 1`: one forward pass per request). An asyncio httpx client in this process sends
`--requests` multipart uploads of real test images at each `--concurrency` (a fixed number of
requests in flight), alternating between the two servers, and reports requests/s, p50/p95/p99
latency and errors (which must be 0), plus the batch sizes the server saw (from /health).

`--mixed` instead runs one server (the defaults) twice: a clean run of good requests, then the
same good requests while `--bad-workers` clients send hostile ones side by side (bodies over the
request limit, declared and chunked; JSON nested 5,000 deep; a 5,000-digit integer; noise; a PNG
header claiming 10 gigapixels; real 6000x6000 PNGs, under the per-image limit; a foreign Host; a
cross-origin form post). It reports errors on the good requests (should be 0), their p99 against
the clean run's (target: within 2x), what each hostile kind got, and the server's RSS before,
at its peak and 3 s after (target: back within 20% of before, which is after the clean run).

Everything is bounded: the request count, and `--time-limit` seconds per run; only 127.0.0.1 is
contacted. On a small machine the client shares the CPU with the server, so absolute figures
are a floor; the on/off ratio is what the comparison is about.

Usage:
    python bench/serve_load.py --model runs/demo --data demo
    python bench/serve_load.py --model runs/demo --data demo --backend onnx --requests 500
    python bench/serve_load.py --model runs/demo --data demo --mixed --requests 400 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
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
        try:
            after = (await client.get("/health")).json()["batching"]
        except httpx.HTTPError as exc:  # a stalled server: the run's errors already say so
            run.errors.append(f"/health after the run: {type(exc).__name__}")
            after = before
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


Hostile = tuple[str, Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]]
Outcomes = Counter[tuple[str, str]]  # (hostile kind, answer) -> count


def flat_png(side: int) -> bytes:
    """A side x side RGB PNG that compresses to little (a gradient): cheap to send, side**2 pixels to decode."""
    row = np.linspace(0, 255, side, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.repeat(np.stack([row] * 3, axis=-1)[None], side, axis=0)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data: refused from the header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
    )


def hostile_requests() -> list[Hostile]:
    """(kind, request) for each bad request of the mixed run; each kind must get a 4xx (or 503), never a 5xx."""
    json_type = {"Content-Type": "application/json"}
    over_limit = bytes(60_000_000)  # over the default 50 MB /predict/batch limit
    big = flat_png(6000)  # 36 megapixels: under the 40-megapixel limit, a real decode
    claims = png_claiming(100_000, 100_000)
    deep = b'{"image": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    digits = b'{"image": ' + b"9" * 5000 + b"}"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the server has to count
        for _ in range(60):
            yield over_limit[:1_000_000]

    return [
        ("60 MB batch, Content-Length", lambda c: c.post("/predict/batch", content=over_limit, headers=json_type)),
        ("60 MB batch, chunked", lambda c: c.post("/predict/batch", content=chunked(), headers=json_type)),
        ("JSON nested 5,000 deep", lambda c: c.post("/predict", content=deep, headers=json_type)),
        ("JSON 5,000-digit integer", lambda c: c.post("/predict/batch", content=digits, headers=json_type)),
        ("50 kB of noise", lambda c: c.post("/predict", content=np.random.default_rng(0).bytes(50_000))),
        ("PNG header of 10 gigapixels", lambda c: c.post("/predict", files={"file": ("bomb.png", claims)})),
        ("6000x6000 PNG", lambda c: c.post("/predict", files={"file": ("big.png", big)})),
        ("Host: evil.example", lambda c: c.get("/info", headers={"Host": "evil.example"})),
        (
            "cross-origin form post",
            lambda c: c.post("/predict", data={"x": "1"}, headers={"Origin": "http://evil.example"}),
        ),
    ]


async def outcome(request: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]], client: httpx.AsyncClient) -> str:
    """'413 JSON', '500 text', 'ReadError' (the server hung up mid-upload, as it may on a refused body)..."""
    try:
        response = await request(client)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    try:
        kind = "JSON" if "error" in response.json() or response.status_code == 200 else "other JSON"
    except ValueError:
        kind = "not JSON"
    return f"{response.status_code} {kind}"


async def mixed_load(url: str, images: list, args: argparse.Namespace, concurrency: int) -> tuple[Run, Outcomes]:
    """The good load, with `args.bad_workers` clients sending hostile requests in turn until it ends."""
    hostile = hostile_requests()
    outcomes: Outcomes = Counter()
    done = asyncio.Event()

    async def bad_worker(offset: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60.0)) as client:
            index = offset
            while not done.is_set():
                kind, request = hostile[index % len(hostile)]
                outcomes[kind, await outcome(request, client)] += 1
                index += 1

    workers = [asyncio.create_task(bad_worker(k * 3)) for k in range(args.bad_workers)]
    try:
        run = await load(url, images, requests=args.requests, concurrency=concurrency, limit=args.time_limit)
    finally:
        done.set()
        await asyncio.gather(*workers)
    return run, outcomes


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakRss:
    """Polls a process's RSS every 50 ms in a thread while the `with` block runs; `peak` in MB."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL after 30 s: a server stuck on a hostile body may not finish in time."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def mixed_main(args: argparse.Namespace, images: list) -> None:
    """Clean run, then the same good load beside hostile requests: good errors, p99 ratio, server RSS."""
    concurrency = args.concurrency[0]
    process, url = start_server(args.model, args.backend, args.max_batch, args.max_wait_ms)
    try:
        asyncio.run(load(url, images, requests=args.warmup, concurrency=8, limit=args.time_limit))
        warm = rss_mb(process.pid)
        print("| run | concurrency | good ok | requests/s | p50 ms | p95 ms | p99 ms | good errors | mean batch |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        clean = asyncio.run(load(url, images, requests=args.requests, concurrency=concurrency, limit=args.time_limit))
        report("clean", concurrency, clean)
        before = rss_mb(process.pid)  # after the clean run: what the good load alone needs
        with PeakRss(process.pid) as peak:
            mixed, outcomes = asyncio.run(mixed_load(url, images, args, concurrency))
        report("mixed", concurrency, mixed)
        time.sleep(3.0)
        after = rss_mb(process.pid)
        alive = answers(url + "/health")
    finally:
        stop(process)
    print(f"\nhostile requests ({sum(outcomes.values())}, {args.bad_workers} clients), kind: answer x count")
    for (kind, answer), count in sorted(outcomes.items()):
        print(f"  {kind}: {answer} x {count}")
    print(f"good p99 mixed / clean: {mixed.percentile(99) / clean.percentile(99):.2f}x (target <= 2x)")
    print(f"server RSS: {warm:.0f} MB warmed up, {before:.0f} MB after the clean run (before the mixed one),")
    print(f"  {peak.peak:.0f} MB peak during the mixed run, {after:.0f} MB 3 s after it")
    print(f"  after / before {after / before:.2f}x (target <= 1.2x); /health afterwards: {'ok' if alive else 'FAILED'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    server_errors = [answer for _, answer in outcomes if answer.startswith("5") and not answer.startswith("503")]
    if clean.errors or mixed.errors or server_errors:
        raise SystemExit("good requests failed, or a hostile one got a 5xx: see above")


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
    parser.add_argument("--mixed", action="store_true", help="clean vs hostile-traffic run on one server instead")
    parser.add_argument("--bad-workers", type=int, default=2, help="clients sending hostile requests (--mixed)")
    args = parser.parse_args()

    images = payloads(args.data)
    print(f"{len(images)} images, {sum(len(d) for _, d in images) / len(images) / 1000:.1f} kB each on average")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    if args.mixed:
        mixed_main(args, images)
        return
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
