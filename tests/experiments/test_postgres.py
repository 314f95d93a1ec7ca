"""Two `visiontune tune` workers on one study in a real PostgreSQL server: no trial lost, none run twice.

The server is Debian's postgresql, started here on loopback in a temporary folder (as `nobody`
when the tests run as root, since initdb refuses root). Without the package the test skips,
naming it; under CI=true it fails instead, as .ci/run installs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import running_in_ci, write_class_folders

REPO = Path(__file__).resolve().parents[2]
STUDY = "shared-study"
TRIALS = 4


def require(ok: bool, reason: str) -> None:
    if not ok:
        if running_in_ci():
            pytest.fail(f"{reason} (CI=true: .ci/run installs it)")
        pytest.skip(reason)


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if (p.parent / "pg_ctl").is_file()]
    return max(found, key=lambda p: int(p.parts[-2]) if p.parts[-2].isdigit() else 0) if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bindir = postgres_bin()
    require(bindir is not None, "needs Debian's postgresql package (initdb, pg_ctl in /usr/lib/postgresql/*/bin)")
    require(importlib.util.find_spec("psycopg") is not None, "needs psycopg for postgresql: pip install '.[postgres]'")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="visiontune-pg-"))  # /tmp itself: pytest's tmp_path is root-only
    if os.geteuid() == 0:  # initdb refuses to run as root: the server runs as nobody, in a folder nobody owns
        require(shutil.which("runuser") is not None, "needs runuser (util-linux) to start postgresql as nobody")
        shutil.chown(root, user="nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    port, data = free_port(), root / "data"

    def pg(*args: str) -> None:
        proc = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        log = root / "server.log"
        assert proc.returncode == 0, f"{args[0]}: {proc.stderr}\n{log.read_text() if log.is_file() else ''}"

    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "visiontune", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o", options, "start")
        yield f"postgresql://visiontune@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").is_file():
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study_without_losing_or_repeating_a_trial(
    postgres_url: str, tmp_path: Path, fashion: dict[str, np.ndarray]
) -> None:
    import optuna
    import sqlalchemy
    from optuna.trial import TrialState

    from visiontune.experiments.study import storage_url, study_lock_key

    data = write_class_folders(tmp_path / "data", fashion, per_class=16)
    (tmp_path / "space.yaml").write_text(  # small_cnn: the promise is the shared study's, not a backbone's
        "method: [finetune, features]\nbackbone: [small_cnn]\nimage_size: [32, 40]\n"
        "freeze_epochs: [0]\naugment: [none]\nlabel_smoothing: null\nrotation: null\n"
    )
    url = storage_url(postgres_url, tmp_path)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as gate:
        # hold the study's lock until both workers wait on it, so they really start together
        gate.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": study_lock_key(STUDY)})
        workers = {name: start_worker(name, data, tmp_path, postgres_url) for name in ("a", "b")}
        try:
            wait_for(lambda: waiting_on_locks(gate) == 2, workers, timeout=180)
            gate.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": study_lock_key(STUDY)})
            for name, proc in workers.items():
                _, stderr = proc.communicate(timeout=400)
                assert proc.returncode == 0, f"worker {name}: {stderr}"
        finally:
            for proc in workers.values():
                proc.kill()
    engine.dispose()

    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials()
    assert [t.number for t in trials] == list(range(TRIALS))  # exactly N: no surplus trial either
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)  # none lost, failed or running
    pids = {name: proc.pid for name, proc in workers.items()}
    ran = {name: {t.number for t in trials if t.user_attrs["pid"] == pid} for name, pid in pids.items()}
    assert ran["a"] and ran["b"] and not ran["a"] & ran["b"]  # both worked; no trial claimed twice
    assert ran["a"] | ran["b"] == set(range(TRIALS))
    for name, numbers in ran.items():  # each trial ran once, in its own folder, in its worker's --out
        out = tmp_path / f"worker-{name}"
        assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-{n:04d}" for n in sorted(numbers)]
        for number in numbers:
            assert json.loads((out / f"trial-{number:04d}" / "trial.json").read_text())["number"] == number


def start_worker(name: str, data: Path, tmp_path: Path, storage: str) -> subprocess.Popen[str]:
    args = [str(data), "--storage", storage, "--study", STUDY, "--trials", str(TRIALS), "--out"]
    args += [str(tmp_path / f"worker-{name}"), "--space", str(tmp_path / "space.yaml"), "--epochs", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "visiontune", "tune", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def waiting_on_locks(connection: object) -> int:
    import sqlalchemy

    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    return int(connection.execute(sqlalchemy.text(query)).scalar())  # type: ignore[attr-defined]


def wait_for(condition: object, workers: dict[str, subprocess.Popen[str]], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        for name, proc in workers.items():
            if proc.poll() is not None:
                pytest.fail(f"worker {name} ended before the study started: {proc.communicate()[1]}")
        assert time.monotonic() < deadline, "the workers never reached the study lock"
        time.sleep(0.2)
