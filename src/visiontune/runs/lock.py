"""One process writes a run folder at a time: a second `train --out same/` is refused, not interleaved.

An advisory `flock` on `<run>/.lock`, held for the whole run. The OS drops it when the process
ends, however it ends, so a killed run never leaves a stale lock behind and `--resume` just works.
Where `fcntl` is missing (Windows) runs are not locked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from visiontune.errors import VisiontuneError
from visiontune.io import writing

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunLockedError(VisiontuneError):
    """Another process is writing this run folder."""

    exit_code = 1


def check_unlocked(run_dir: Path) -> None:
    """Raise RunLockedError when another live process holds the folder's lock (before anything is removed)."""
    lock = run_dir / LOCK_FILE
    if fcntl is None or not lock.is_file():
        return
    with open(lock, "a+") as handle:
        _try_lock(handle, run_dir)


@contextmanager
def run_lock(run_dir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold the folder's lock while the body runs (only the process that writes: rank 0)."""
    if fcntl is None or not enabled:
        yield
        return
    with writing(run_dir):  # a read-only place: one line naming it
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115  # closed by the with below
    with handle:
        _try_lock(handle, run_dir)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_lock(handle: object, run_dir: Path) -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
    except BlockingIOError:
        handle.seek(0)  # type: ignore[attr-defined]
        pid = handle.read().strip() or "?"  # type: ignore[attr-defined]
        raise RunLockedError(
            f"{run_dir} is being written by another visiontune process (pid {pid});"
            " wait for it, or choose another --out"
        ) from None
