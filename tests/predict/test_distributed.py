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
from contextlib import suppress
from dataclasses import dataclass
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


@dataclass
class Cluster:
    address: str
    sessions: list[int]  # sessions of the two `ray start`s: every Ray process of this cluster is in one

    def processes(self, name: str = "") -> list[int]:
        """PIDs of this cluster's processes whose command line (a Ray actor's: its title) holds `name`."""
        found = []
        for entry in Path("/proc").iterdir():
            with suppress(OSError, ValueError):
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
                if name in title and os.getsid(int(entry.name)) in self.sessions:
                    found.append(int(entry.name))
        return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A head and a worker node on loopback, one CPU each, this process connected; every Ray process killed after."""
    import ray

    temp = tempfile.mkdtemp(prefix="vt", dir="/tmp")  # unix socket paths must stay short
    port, sessions = _free_port(), []
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=100000000", "--disable-usage-stats"]
    commands = [
        [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}", *common],
        [RAY, "start", f"--address=127.0.0.1:{port}", *common],
    ]
    log = tmp_path_factory.mktemp("ray") / "ray.log"
    saved = os.environ.get("RAY_AUTH_MODE")
    try:
        with log.open("w") as output:
            for command in commands:
                started = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=_env(),
                                           start_new_session=True)  # fmt: skip
                sessions.append(started.pid)  # its daemons and their workers stay in this session
                assert started.wait(timeout=120) == 0, log.read_text()[-3000:]
        os.environ["RAY_AUTH_MODE"] = "disabled"
        cluster = Cluster(f"127.0.0.1:{port}", sessions)
        yield cluster
    finally:
        ray.shutdown()
        os.environ.pop("RAY_AUTH_MODE") if saved is None else os.environ.update(RAY_AUTH_MODE=saved)
        for pid in Cluster("", sessions).processes():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


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


def _kill_a_worker_once_shards_appear(cluster: Cluster, out: Path, stop: threading.Event, killed: list[int]) -> None:
    while not stop.is_set() and not killed:
        workers = cluster.processes("PredictWorker") if len(list(out.glob("part-*.parquet"))) >= 2 else []
        if workers:
            os.kill(workers[0], signal.SIGKILL)  # mid-job: Ray restarts it and runs its batch again
            killed.append(workers[0])
        time.sleep(0.05)


def test_two_node_cluster_rows_equal_one_process_a_killed_worker_and_a_restart_lose_nothing(
    cluster: Cluster, finetuned_run: Path, tmp_path: Path, fashion: dict[str, np.ndarray]
) -> None:
    from visiontune.cli.main import app

    paths = _write_images(tmp_path / "images", fashion, 200)
    expected = sorted((p.to_dict() for p in visiontune.load(finetuned_run).predict(paths)), key=lambda r: r["path"])
    out = tmp_path / "out"
    arguments = ["predict", str(finetuned_run), str(tmp_path / "images"), "--ray", cluster.address, "--out", str(out),
                 "--batch-size", "8", "--concurrency", "2"]  # fmt: skip
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_a_worker_once_shards_appear, args=(cluster, out, stop, killed), daemon=True)
    killer.start()
    try:
        assert app(arguments, standalone_mode=False) == 3  # zz-broken.png is an error row; the rest predicted
    finally:
        stop.set()
    assert killed, "no worker was killed mid-job"
    assert_same_rows(read_predictions(str(out)), expected)
    lost = sorted(out.glob("part-*.parquet"))[::3]  # as if the job had stopped before writing these
    redone = {p for shard in lost for p in pq.read_table(shard, columns=["path"]).column("path").to_pylist()}
    for shard in lost:
        shard.unlink()
    restart = [*arguments[:-1], "1"]  # --concurrency 1: one worker's start-up is enough for a third of the rows
    assert app(restart, standalone_mode=False) == (3 if paths[-1] in redone else 0)
    written = [p for table in Shards(str(out)).tables(columns=["path"]) for p in table.column("path").to_pylist()]
    assert Counter(written) == Counter(paths)  # every input exactly once
    rows = read_predictions(str(out))
    assert_same_rows(rows, expected)
    broken = [r for r in rows if r["error"]]
    assert [r["path"] for r in broken] == [paths[-1]] and not broken[0]["predictions"]


@pytest.mark.slow
def test_embed_on_the_cluster_fills_the_feature_cache_that_training_reads(
    cluster: Cluster, trained_data: Path, tmp_path: Path
) -> None:
    from visiontune.cli.main import app
    from visiontune.features import extract_features
    from visiontune.models import create_classifier

    folder = trained_data / "test" / "trouser"
    arguments = ["embed", str(folder), "--ray", cluster.address, "--out", str(tmp_path / "emb"), "--image-size", "64",
                 "--cache-dir", str(tmp_path / "cache"), "--concurrency", "2", "--batch-size", "4"]  # fmt: skip
    assert app(arguments, standalone_mode=False) == 0
    paths = sorted(str(p) for p in folder.glob("*.png"))
    # what `train DATA --method features --image-size 64` extracts: every vector found, none computed
    model = create_classifier("efficientnet_lite0", 3, image_size=64)
    cached = extract_features(paths, model, cache=tmp_path / "cache")
    assert (cached.extracted, cached.reused) == (0, len(paths))
    fresh = extract_features(paths, model, cache=False).features
    np.testing.assert_allclose(cached.features, fresh, atol=1e-4)
    assert app(arguments, standalone_mode=False) == 0  # run again: every path is already there


def test_a_restarted_job_skips_what_is_written_and_another_job_is_refused(finetuned_run: Path, tmp_path: Path) -> None:
    from visiontune.predict.distributed import predict_on_ray

    out = str(tmp_path / "out")
    assert predict_on_ray(str(finetuned_run), [], out).written == 0  # claims the folder: job.json
    shards = Shards(out)
    rows = [{"path": "a.png", "predictions": [{"label": "x", "probability": 0.5}], "unknown": False, "error": None}]
    first = shards.write(prediction_table(rows))
    assert shards.write(prediction_table(rows)) == first  # a retried batch replaces its own shard
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["job.json", first])
    result = predict_on_ray(str(finetuned_run), ["a.png"], out)
    assert (result.skipped, result.written) == (1, 0)  # nothing left to do: Ray is not even started
    with pytest.raises(ConfigError, match="another job"):
        predict_on_ray(str(finetuned_run), ["a.png"], out, topk=3)


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
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["predict", str(finetuned_run), str(tmp_path), "--ray", "auto", "--out", str(out)])
    assert isinstance(result.exception, MissingPackageError)
    assert not out.exists()


def test_ray_options_are_checked_before_any_work(tmp_path: Path) -> None:
    from visiontune.cli.main import app

    for extra, message in (([], "give --out FOLDER"), (["--out", "o", "--format", "json"], "don't apply")):
        with pytest.raises(ConfigError, match=message):
            app(["predict", "runs/none", str(tmp_path), "--ray", "auto", *extra], standalone_mode=False)
