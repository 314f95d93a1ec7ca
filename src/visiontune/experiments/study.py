"""Where a search's trials live, and how several workers share them without losing or repeating one.

The study is Optuna's RDB storage: SQLite in the output folder by default (so running the same
command again resumes it), or any URL Optuna takes, e.g. `postgresql://user@host/db`, for workers
on several machines.

Two things Optuna leaves to the caller are done here:

- An exact trial count. "Count the trials, then start one" must be atomic across workers, or two
  workers seeing N-1 both start one. A `StudyLock` serialises it: a PostgreSQL advisory lock
  (held by a session, so a killed worker's lock dies with its connection), or an `flock` on a
  file beside a SQLite database.
- No lost trial. A trial that was interrupted (Ctrl-C, SIGTERM) or whose worker died (its
  heartbeat stopped, or its process is gone from this machine) is failed and its parameters are
  queued again, once; a trial that failed with an error is not retried, as it would fail again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from visiontune.errors import ConfigError, MissingPackageError, VisiontuneError

try:
    import fcntl
except ImportError:  # Windows: workers on one machine are not serialised
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

HEARTBEAT_S = 60  # a worker's trials refresh their heartbeat this often...
GRACE_S = 180  # ...and one silent for this long is taken as dead
RETRY_OF = "retry_of"  # user attr of a re-queued trial: the number of the one it replaces
ERROR = "error"  # user attr of a trial that failed with an error (never re-queued)


class StudyError(VisiontuneError):
    """The study's storage can't be opened or holds a different search."""

    exit_code = 2


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def storage_url(storage: str | None, out: Path) -> str:
    """The study's database URL; a bare postgresql:// gets the psycopg (3) driver, which the `postgres` extra installs.

    SQLAlchemy 2.0 gives a bare URL psycopg2 and 2.1 psycopg: naming it keeps one install working with both.
    """
    if not storage:
        return default_storage(out)
    for bare in ("postgresql://", "postgres://"):
        if storage.startswith(bare):
            return "postgresql+psycopg://" + storage.removeprefix(bare)
    return storage


def redact(url: str) -> str:
    """The URL without its password, for messages and files."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: say nothing about it
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str) -> Any:
    """Optuna's RDBStorage with heartbeats; a one-line error naming --storage when it can't be opened."""
    import optuna
    import sqlalchemy.exc

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # wait out another worker's write
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **kwargs)
    except ImportError as exc:
        raise MissingPackageError(_driver_hint(url, exc)) from exc
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
        if isinstance(exc, sqlalchemy.exc.NoSuchModuleError | sqlalchemy.exc.ArgumentError):
            raise StudyError(
                f"--storage {redact(url)}: not a database URL SQLAlchemy knows; use e.g. sqlite:///study.db"
                " or postgresql://user@host/db"
            ) from exc
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StudyError(
            f"--storage {redact(url)}: can't open the study database ({reason}); check the URL and that the server"
            " is running and reachable"
        ) from exc


def _driver_hint(url: str, exc: ImportError) -> str:
    if url.startswith("postgres"):
        return f"--storage postgresql://... needs its driver ({exc.name or exc}): pip install 'visiontune[postgres]'"
    return f"--storage {redact(url)}: its database driver is not installed ({exc})"


class StudyLock:
    """Serialises "count the study's trials, then start one" across the workers of one study.

    Idempotent release: `release()` may be called again (the objective releases as soon as its
    trial exists; the loop releases in `finally`).
    """

    def acquire(self) -> None:
        """Block until this worker holds the lock."""

    def release(self) -> None:
        """Let the next worker in (no-op when not held)."""

    def close(self) -> None:
        """Free the lock's connection or file."""


class _PostgresLock(StudyLock):
    """`pg_advisory_lock` on its own connection; the server frees it if this process dies."""

    def __init__(self, url: str, key: int) -> None:
        import sqlalchemy

        self.key, self.held = key, False
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self.connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._text = sqlalchemy.text

    def acquire(self) -> None:
        self.connection.execute(self._text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        self.held = True

    def release(self) -> None:
        if self.held:
            self.connection.execute(self._text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self.held = False

    def close(self) -> None:
        self.release()
        self.connection.close()
        self.engine.dispose()


class _FileLock(StudyLock):
    """`flock` on a file: workers on one machine (SQLite's case); the OS frees it if this process dies."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a+")  # noqa: SIM115 - held for the worker's lifetime, closed in close()
        self.held = False

    def acquire(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if self.held:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.held = False

    def close(self) -> None:
        self.release()
        self.handle.close()


def study_lock_key(study_name: str) -> int:
    """The signed 64-bit advisory-lock key of a study (the same on every machine)."""
    digest = hashlib.sha256(f"visiontune.tune:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def open_lock(url: str, study_name: str, out: Path) -> StudyLock:
    """The lock for this storage: advisory on PostgreSQL, a file beside SQLite, else a file in `out`."""
    if url.startswith("postgres"):
        try:
            return _PostgresLock(url, study_lock_key(study_name))
        except ImportError as exc:
            raise MissingPackageError(_driver_hint(url, exc)) from exc
        except Exception as exc:  # SQLAlchemy's connection errors
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise StudyError(f"--storage {redact(url)}: can't connect ({reason}); is the server running?") from exc
    if fcntl is None:
        return StudyLock()
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return _FileLock(Path(url.removeprefix("sqlite:///") + ".lock"))
    log.warning("--storage %s: workers are serialised only on this machine (PostgreSQL locks across them)", url)
    return _FileLock(out / ".study.lock")


# ----------------------------------------------------------------------------------- no trial lost
def recover_lost_trials(study: Any) -> None:
    """Fail dead workers' trials and queue every lost trial's parameters again (call it under the study lock).

    A worker is dead when its trial's heartbeat stopped (GRACE_S), or at once when its process is gone
    from this machine.
    """
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    fail_dead_local_trials(study)
    requeue_lost_trials(study)


def fail_dead_local_trials(study: Any) -> None:
    """Fail RUNNING trials started on this machine by a process that no longer exists (killed -9).

    Other machines' dead workers are found by their stopped heartbeat instead (after GRACE_S).
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == host and isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
            log.warning("trial %d: its worker (pid %d) is gone; it will run again", trial.number, pid)
            with contextlib.suppress(ValueError, RuntimeError):  # finished meanwhile
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def requeue_lost_trials(study: Any) -> list[int]:
    """Queue again, once, the parameters of every trial that failed without an error of its own.

    Returns the numbers of the trials re-queued. Call it under the study lock, so two workers don't
    both queue one.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    queued = []
    for trial in trials:
        if trial.state == TrialState.FAIL and ERROR not in trial.user_attrs and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
            queued.append(trial.number)
    if queued:
        log.warning("re-queued the parameters of interrupted trial(s) %s", ", ".join(map(str, queued)))
    return queued


def check_search(study: Any, search: dict[str, Any], storage: str) -> None:
    """Refuse to resume a study with a different search: its trials would not be comparable."""
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", search)
        return
    for key in sorted(set(stored) | set(search)):
        if stored.get(key) != search.get(key):
            raise StudyError(
                f"study {study.study_name!r} in {redact(storage)} was started with a different {key} "
                f"({stored.get(key)!r}, now {search.get(key)!r}); resume it with the same options,"
                " or choose another --out (or --study)"
            )


def check_name(name: str) -> str:
    if not name or len(name) > 200:
        raise ConfigError(f"--study must be 1 to 200 characters. Received: {name!r}")
    return name
