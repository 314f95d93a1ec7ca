"""One read per file: content hash, header facts, a full decode check and a perceptual hash.

The audit and the leakage-safe split both need these, so they are computed once, in parallel,
and cached in SQLite keyed by (path, size, mtime) so a second scan of a large data set only
reads files that changed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from visiontune.data.images import open_image, read_header
from visiontune.errors import ImageError
from visiontune.system import available_cpus

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_CHUNK = 2048
_PROCESS_MIN_FILES = 2000
THUMB_SIDE = 16
_HASH_SIDE = 32  # pHash: DCT of a 32x32 grey thumbnail, keep the 8x8 lowest frequencies


@dataclass(frozen=True)
class FileInfo:
    """What one read of a file tells: `error` is set (and the image facts None) when it can't be used."""

    path: str
    size_bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    phash: int | None = None
    thumb: bytes | None = None  # 16x16 grey thumbnail, confirms pHash matches (tiny images collide often)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(_HASH_SIDE)


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash: bits of the low-frequency DCT coefficients above their median.

    Robust to re-encoding, resizing and small colour changes, so near-duplicates share it.
    """
    grey = np.asarray(image.convert("L").resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.BOX), dtype=np.float64)
    coeffs = (_DCT @ grey @ _DCT.T)[:8, :8].ravel()  # (64,)
    bits = coeffs > np.median(coeffs[1:])  # bit i of the hash is coefficient i
    return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")


def thumbnail(image: Image.Image) -> bytes:
    """16x16 grey thumbnail (256 bytes): compared pixel-wise to confirm a pHash near-match."""
    grey = image.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    return grey.tobytes()


def read_file_info(path: str | Path, max_pixels: int) -> FileInfo:
    """Hash, header and decode check of one file, reading it from disk once."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return FileInfo(path, 0, "", error=f"can't read file ({exc.strerror or exc})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        header = read_header(io.BytesIO(data), max_pixels=max_pixels)
        image = open_image(io.BytesIO(data), max_pixels=max_pixels, draft_size=(_HASH_SIDE * 2, _HASH_SIDE * 2))
    except ImageError as exc:
        return FileInfo(path, len(data), digest, error=exc.reason)
    facts = (header.width, header.height, header.mode, header.format)
    return FileInfo(path, len(data), digest, *facts, phash(image), thumbnail(image))


def default_cache_path() -> Path:
    """~/.cache/visiontune/files.sqlite, or under $VISIONTUNE_CACHE_DIR / $XDG_CACHE_HOME."""
    base = (
        os.environ.get("VISIONTUNE_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visiontune"
    )
    return Path(base) / "files.sqlite"


def _cache_key(path: str) -> str | bytes:
    """The absolute path; as bytes when the name is not valid UTF-8 (sqlite refuses the lone surrogates Python uses)."""
    key = os.path.abspath(path)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(key)
    return key


def _row(i: FileInfo, st: os.stat_result) -> tuple[object, ...]:
    key = (_cache_key(i.path), st.st_size, st.st_mtime_ns)
    return (*key, i.sha256, i.width, i.height, i.mode, i.format, format(i.phash, "016x"), i.thumb)


class FileInfoCache:
    """SQLite table of FileInfo keyed by absolute path, size and mtime; only readable files are stored."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30)
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS files_v{CACHE_VERSION} (key TEXT PRIMARY KEY, size INTEGER, mtime INTEGER,"
                " sha256 TEXT, width INTEGER, height INTEGER, mode TEXT, format TEXT, phash TEXT, thumb BLOB)"
            )
        except sqlite3.Error as exc:  # a read-only home or a locked file must not stop a scan
            log.warning("file-info cache %s unusable (%s); scanning without it", path, exc)
            self._db = None

    def get(self, path: str, stat: os.stat_result) -> FileInfo | None:
        if self._db is None:
            return None
        row = self._db.execute(
            f"SELECT sha256, width, height, mode, format, phash, thumb FROM files_v{CACHE_VERSION}"
            " WHERE key = ? AND size = ? AND mtime = ?",
            (_cache_key(path), stat.st_size, stat.st_mtime_ns),
        ).fetchone()
        if row is None:
            return None
        sha, width, height, mode, fmt, hash_hex, thumb = row
        return FileInfo(path, stat.st_size, sha, width, height, mode, fmt, int(hash_hex, 16), thumb)

    def put(self, infos: Sequence[tuple[FileInfo, os.stat_result]]) -> None:
        if self._db is None:
            return
        rows = [_row(i, st) for i, st in infos if i.ok and i.phash is not None]
        with self._db:
            self._db.executemany(f"INSERT OR REPLACE INTO files_v{CACHE_VERSION} VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def scan_files(
    paths: Sequence[str | Path],
    *,
    max_pixels: int = 64_000_000,
    cache_path: Path | None = None,
    use_cache: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[FileInfo]:
    """FileInfo for every path, in order; cached files are not read again.

    `progress(n)` is called with the number of files just finished.
    """
    cache = FileInfoCache((cache_path or default_cache_path()) if use_cache else None)
    try:
        return _scan(paths, cache, max_pixels, available_cpus(), progress)
    finally:
        cache.close()


def _scan(
    paths: Sequence[str | Path],
    cache: FileInfoCache,
    max_pixels: int,
    workers: int,
    progress: Callable[[int], None] | None,
) -> list[FileInfo]:
    results: list[FileInfo | None] = [None] * len(paths)
    todo: list[tuple[int, str, os.stat_result | None]] = []
    for index, path in enumerate(map(str, paths)):
        stat = _stat(path)
        hit = cache.get(path, stat) if stat else None
        if hit is None:
            todo.append((index, path, stat))
        results[index] = hit
    if progress and len(paths) > len(todo):
        progress(len(paths) - len(todo))
    with _pool(workers, len(todo)) as pool:
        for start in range(0, len(todo), _CHUNK):  # chunks bound pending work and feed the progress bar
            chunk = todo[start : start + _CHUNK]
            paths_chunk = [path for _, path, _ in chunk]
            infos = list(pool.map(read_file_info, paths_chunk, [max_pixels] * len(chunk), chunksize=32))
            for (index, _, _), info in zip(chunk, infos, strict=True):
                results[index] = info
            cache.put([(info, stat) for (_, _, stat), info in zip(chunk, infos, strict=True) if stat is not None])
            if progress:
                progress(len(chunk))
    return [r for r in results if r is not None]


def _pool(workers: int, count: int) -> Executor:
    """Processes for big scans: per-file work on small images is Python-bound and holds the GIL
    (threads measured slower than one thread on 28 px PNGs); a thread for small scans, where
    starting processes would cost more than it saves."""
    if workers > 1 and count >= _PROCESS_MIN_FILES and _spawn_can_start():
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    return ThreadPoolExecutor(max_workers=1)


def _spawn_can_start() -> bool:
    """Spawned processes re-import __main__ from its file: impossible for a script piped to `python -`."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
