"""predict/distributed.py on a real two-node Ray cluster (head + worker node, started here on loopback).

The cluster test is the one that proves the promise: the same rows as one process, and every
input written exactly once even when a worker is SIGKILLed mid-job. The others need no cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import visiontune
from visiontune.errors import ConfigError, MissingPackageError
from visiontune.predict.locations import list_images
from visiontune.predict.shards import Shards, prediction_table, read_predictions

SRC = str(Path(visiontune.__file__).resolve().parents[1])
RAY = str(Path(sys.executable).with_name("ray"))


def _write_images(folder: Path, fashion: dict[str, np.ndarray], count: int) -> list[str]:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(fashion["test_images"][i]).save(folder / f"{i:04d}.png")
    (folder / "zz-broken.png").write_bytes(b"not a png")  # an error row, not a failed job
    return [str(p) for p in sorted(folder.glob("*.png"))]  # zz-broken.png last


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    # a loopback cluster of this test only: no auth token to hand from the head to the others
    return {**os.environ, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ray_cluster(log: Path) -> Iterator[str]:
    """A head and a worker node on loopback, one CPU each, as their own process groups; all killed after."""
    temp = tempfile.mkdtemp(prefix="vt", dir="/tmp")  # unix socket paths must stay short
    port, groups = _free_port(), []
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=100000000", "--disable-usage-stats"]
    commands = [
        [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}", *common],
        [RAY, "start", f"--address=127.0.0.1:{port}", *common],
    ]
    try:
        with log.open("w") as output:
            for command in commands:
                started = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=_env(),
                                           start_new_session=True)  # fmt: skip
                groups.append(started.pid)  # its daemons stay in this process group
                assert started.wait(timeout=120) == 0, log.read_text()[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        for group in groups:
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _workers(groups_of: str) -> list[int]:
    """PIDs of the model workers (Ray actors running PredictWorker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and groups_of in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def assert_same_rows(rows: list[dict], expected: list[dict]) -> None:
    """The same rows, probabilities to rounding: a worker's thread count and batch change float sums in the 7th digit.

    Top-k labels must agree except where two neighbours are tied to that precision.
    """
    assert [(r["path"], r["unknown"], r["error"]) for r in rows] == [
        (r["path"], r["unknown"], r["error"]) for r in expected
    ]
    for row, reference in zip(rows, expected, strict=True):
        assert len(row["predictions"]) == len(reference["predictions"])
        for got, want in zip(row["predictions"], reference["predictions"], strict=True):
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)
            tied = [p["label"] for p in reference["predictions"] if abs(p["probability"] - got["probability"]) <= 1e-5]
            assert got["label"] == want["label"] or got["label"] in tied, (row, reference)


def _kill_a_worker_once_shards_appear(out: Path, stop: threading.Event, killed: list[int]) -> None:
    while not stop.is_set() and not killed:
        workers = _workers("PredictWorker") if len(list(out.glob("part-*.parquet"))) >= 2 else []
        if workers:
            os.kill(workers[0], signal.SIGKILL)  # mid-job: Ray restarts it and runs its batch again
            killed.append(workers[0])
        time.sleep(0.05)


def test_two_node_cluster_rows_equal_one_process_a_killed_worker_and_a_restart_lose_nothing(
    finetuned_run: Path, tmp_path: Path, fashion: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from visiontune.cli.main import app

    paths = _write_images(tmp_path / "images", fashion, 300)
    expected = sorted((p.to_dict() for p in visiontune.load(finetuned_run).predict(paths)), key=lambda r: r["path"])
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_a_worker_once_shards_appear, args=(out, stop, killed), daemon=True)
    with ray_cluster(tmp_path / "ray.log") as address:
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        arguments = ["predict", str(finetuned_run), str(tmp_path / "images"), "--ray", address, "--out", str(out),
                     "--batch-size", "8", "--concurrency", "2"]  # fmt: skip
        try:
            killer.start()
            assert app(arguments, standalone_mode=False) == 3  # zz-broken.png is an error row; the rest predicted
            stop.set()
            assert killed, "no worker was killed mid-job"
            assert_same_rows(read_predictions(str(out)), expected)
            lost = sorted(out.glob("part-*.parquet"))[::3]  # as if the job had stopped before writing these
            redone = {p for shard in lost for p in pq.read_table(shard, columns=["path"]).column("path").to_pylist()}
            for shard in lost:
                shard.unlink()
            assert app(arguments, standalone_mode=False) == (3 if paths[-1] in redone else 0)
        finally:
            stop.set()
            ray.shutdown()
    written = [p for table in Shards(str(out)).tables(columns=["path"]) for p in table.column("path").to_pylist()]
    assert Counter(written) == Counter(paths)  # every input exactly once
    rows = read_predictions(str(out))
    assert_same_rows(rows, expected)
    broken = [r for r in rows if r["error"]]
    assert [r["path"] for r in broken] == [paths[-1]] and not broken[0]["predictions"]


def test_a_restarted_job_skips_what_is_written_and_another_job_is_refused(tmp_path: Path) -> None:
    from visiontune.predict.distributed import RayOptions, _run

    shards = Shards(str(tmp_path / "out"))
    shards.claim({"task": "predict", "model": "m"})
    rows = [{"path": "a.png", "predictions": [{"label": "x", "probability": 0.5}], "unknown": False, "error": None}]
    first = shards.write(prediction_table(rows))
    assert shards.write(prediction_table(rows)) == first  # a retried batch replaces its own shard
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["job.json", first])
    result = _run(["a.png"], str(tmp_path / "out"), {"task": "predict", "model": "m"}, object, {}, None, RayOptions(),
                  0, None)  # fmt: skip
    assert (result.skipped, result.written) == (1, 0)  # nothing left: Ray is not even started
    with pytest.raises(ConfigError, match="another job"):
        shards.claim({"task": "predict", "model": "other"})


def test_sources_folder_glob_table_and_url_name_the_same_files(tmp_path: Path, fashion: dict[str, np.ndarray]) -> None:
    paths = _write_images(tmp_path / "images", fashion, 3)
    pq.write_table(pa.table({"path": [Path(p).name for p in paths]}), tmp_path / "images" / "list.parquet")
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{p},x\n" for p in paths))
    assert list_images([str(tmp_path / "images")]) == (paths, [])
    assert list_images([str(tmp_path / "images" / "*.png")])[0] == paths
    assert list_images([str(tmp_path / "list.csv")])[0] == paths
    assert list_images([str(tmp_path / "images" / "list.parquet")])[0] == paths
    assert list_images([f"file://{tmp_path}/images/"])[0] == [f"file://{p}" for p in paths]


def test_without_ray_the_option_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, finetuned_run: Path
) -> None:
    from visiontune.cli.main import app
    from visiontune.predict.distributed import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingPackageError, match=r"pip install 'visiontune\[ray\]'"):
        require_ray()
    result = CliRunner().invoke(app, ["predict", str(finetuned_run), str(tmp_path), "--ray", "auto", "--out", "o"])
    assert isinstance(result.exception, MissingPackageError)
    assert not (tmp_path / "o").exists()
