"""Atomic file writes: a killed process never leaves a half-written output behind.

A write that fails (a full disk, a read-only folder) is an `OutputError`: one line naming the file
(exit status 7), and the file it was to replace is left as it was.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from visiontune.errors import OutputError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors) report an errno


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    The temporary file lives in the same folder so the rename is atomic on POSIX and Windows.
    """
    target = Path(path)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; outputs should get the usual permissions
            os.fchmod(fd, 0o666 & ~_UMASK)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an I/O error raised while the body writes `path` into a one-line `OutputError` naming it.

    Libraries that are not Python report an errno only in their message (safetensors:
    "I/O error: No space left on device (os error 28)"); those count too. Other errors pass.
    """
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:
        code = os_errno(exc)
        if code is None:
            raise
        raise output_error(path, code, exc) from exc


def os_errno(exc: BaseException) -> int | None:
    """The errno behind an OSError, or behind a library error whose message carries one; else None."""
    if isinstance(exc, OSError):
        return exc.errno
    found = _OS_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


def output_error(path: str | os.PathLike[str], code: int | None, exc: BaseException) -> OutputError:
    """The one-line error for a failed write of `path`: what went wrong and what to do."""
    reason = os.strerror(code) if code else str(exc)
    if code in DISK_FULL:
        return OutputError(f"{path}: disk full ({reason}); free some space and run it again", disk_full=True)
    if code in NOT_WRITABLE:
        return OutputError(f"{path}: can't write here ({reason}); choose another output folder or fix its permissions")
    return OutputError(f"{path}: can't write ({reason})")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def json_safe(value: Any) -> Any:
    """NaN and infinity become null, in nested dicts and lists: strict JSON for every reader (browsers too)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
