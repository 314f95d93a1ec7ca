"""Where a large job's images are: local files, folders and globs, tables of paths, or fsspec URLs.

`list_images` turns what the user typed into the list of image paths a distributed job works
through. Local files, folders and globs expand exactly as `visiontune predict` expands them
(`inputs.expand_inputs`), so both name every row the same way; a `.csv`/`.tsv`/`.parquet` file
is a table of paths (its `path` column, or its first); anything with a scheme (`s3://bucket/x/`,
`gs://...`, `file:///...`) is listed and read through fsspec, whose protocol packages (s3fs,
gcsfs) are installed only by those who need them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from visiontune.data.images import is_image_file, open_image
from visiontune.data.loader import ImageItems
from visiontune.errors import DatasetError, ImageError, MissingPackageError
from visiontune.predict.inputs import expand_inputs

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
_GLOB_CHARS = frozenset("*?[")


def is_url(path: str) -> bool:
    """True for `scheme://...` (s3, gs, file, http...), never for a Windows drive such as C:\\."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").isalnum()


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, path within it) for a URL; one line naming the package when it is missing."""
    try:
        import fsspec
    except ImportError as exc:
        raise MissingPackageError("URL inputs need fsspec: pip install 'visiontune[ray]'") from exc
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # fsspec knows the scheme, but not its package (s3fs, gcsfs, ...)
        raise MissingPackageError(f"{url}: {exc}") from exc
    except ValueError as exc:
        raise DatasetError(f"{url}: {exc}") from exc


def list_images(arguments: Iterable[str]) -> tuple[list[str], list[str]]:
    """(image paths in the order given, each once; arguments that matched nothing)."""
    paths: list[str] = []
    empty: list[str] = []
    for argument in arguments:
        if argument.lower().endswith(TABLE_SUFFIXES) and (is_url(argument) or Path(argument).is_file()):
            found = _table_paths(argument)
        elif is_url(argument):
            found = _url_images(argument)
        else:
            expanded = expand_inputs([argument])
            found, empty = [str(p) for p in expanded.paths], empty + expanded.empty
            paths.extend(found)
            continue
        if not found:
            empty.append(argument)
        paths.extend(found)
    return list(dict.fromkeys(paths)), empty


def _url_images(url: str) -> list[str]:
    """Image files under a URL folder (recursively), matching a URL glob, or the one file named."""
    fs, root = filesystem(url)
    if _GLOB_CHARS & set(root):
        found = fs.glob(root)
    elif fs.isdir(root):
        found = fs.find(root)
    else:
        return [url]
    return [fs.unstrip_protocol(p) for p in sorted(found) if is_image_file(p)]


def _table_paths(table: str) -> list[str]:
    """The `path` column (or the first) of a CSV/TSV/Parquet file; relative paths are relative to the table."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    fs, inner = filesystem(table) if is_url(table) else (None, table)
    try:
        with fs.open(inner, "rb") if fs else open(table, "rb") as handle:
            if table.lower().endswith(".parquet"):
                data = pq.read_table(handle)
            else:
                delimiter = "\t" if table.lower().endswith(".tsv") else ","
                data = pcsv.read_csv(handle, parse_options=pcsv.ParseOptions(delimiter=delimiter))
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DatasetError(f"{table}: can't be read as a table of paths ({exc})") from exc
    column = "path" if "path" in data.column_names else data.column_names[0]
    base = table.rsplit("/", 1)[0] if "/" in table else "."
    return [_join(base, str(p)) for p in data.column(column).to_pylist() if p]


def _join(base: str, path: str) -> str:
    if is_url(path) or Path(path).is_absolute():
        return path
    return f"{base}/{path}" if is_url(base) else str(Path(base) / path)


class UrlItems(ImageItems):
    """ImageItems that also read fsspec URLs (local paths are read as every other loader reads them)."""

    def _open(self, item: Any) -> tuple[Any, str | None]:
        if not (isinstance(item, str) and is_url(item)):
            return super()._open(item)
        import hashlib

        fs, inner = filesystem(item)
        try:
            data = fs.cat_file(inner)
        except FileNotFoundError as exc:
            raise ImageError(item, "no such file") from exc
        image = open_image(io.BytesIO(data), max_pixels=self.max_pixels, draft_size=self.draft_size)
        return image, hashlib.sha256(data).hexdigest() if self.digest else None
