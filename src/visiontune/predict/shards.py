"""A distributed job's output folder: Parquet shards written exactly once, read back as rows.

Each batch of inputs becomes one shard, `part-<hash of its input paths>.parquet`, written to a
temporary name and renamed (object stores such as S3 publish an object whole when it is closed).
So a worker that dies mid-batch leaves nothing, and the retried batch (Ray reruns it) rewrites the
same name with the same rows: never a row twice. `written_paths` is what a restarted job skips.
`job.json` records what the rows are answers to (model, top-k, ...): another job is refused the
same folder, instead of mixing two models' answers in one table.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visiontune.errors import ConfigError
from visiontune.predict.locations import filesystem, is_url

PREFIX = "part-"
JOB_FILE = "job.json"

# the rows of `visiontune predict --format json`, flattened: predictions -> labels + probabilities
PREDICTION_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("probabilities", pa.list_(pa.float64())),
        ("unknown", pa.bool_()),
        ("error", pa.string()),
    ]
)
EMBEDDING_SCHEMA = pa.schema(
    [("path", pa.string()), ("sha256", pa.string()), ("embedding", pa.list_(pa.float32())), ("error", pa.string())]
)


class Shards:
    """The shard folder `root` (a local path or an fsspec URL)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") or "/"
        fs, path = filesystem(root) if is_url(root) else (None, self.root)
        self.fs = None if fs is not None and _is_local(fs) else fs  # file:// URLs are local folders
        self.path = path.rstrip("/") or "/"

    # ---- writing ------------------------------------------------------------------------------
    def write(self, table: pa.Table) -> str:
        """Write one batch's rows as its shard (named by its paths); returns the shard's name."""
        paths = table.column("path").to_pylist()
        name = f"{PREFIX}{hashlib.sha256(chr(10).join(paths).encode()).hexdigest()[:24]}.parquet"
        target = f"{self.path}/{name}"
        if self.fs is not None:
            with self.fs.open(target, "wb") as handle:  # an object appears whole on close
                pq.write_table(table, handle)
            return name
        temporary = f"{self.path}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            pq.write_table(table, temporary)
            os.replace(temporary, target)  # a retried batch replaces its own shard with the same rows
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return name

    def claim(self, job: dict[str, Any]) -> None:
        """Create the folder and record `job`; refuse a folder holding another job's rows."""
        text = json.dumps(job, indent=2, sort_keys=True) + "\n"
        job = json.loads(text)  # as it reads back: tuples are lists
        if self.fs is None:
            if os.path.isfile(self.path):
                raise ConfigError(f"{self.path} is a file; give --out a folder for the Parquet shards")
            os.makedirs(self.path, exist_ok=True)
        else:
            self.fs.makedirs(self.path, exist_ok=True)
        found = self._read_text(JOB_FILE)
        if found is not None and json.loads(found) != job:
            raise ConfigError(
                f"{self.root} holds the output of another job (its {JOB_FILE} differs: model, options or "
                "task); give --out another folder, or run the same command to finish that job"
            )
        if found is None:
            self._write_text(JOB_FILE, text)

    # ---- reading ------------------------------------------------------------------------------
    def files(self) -> list[str]:
        """The shards written so far (never a temporary)."""
        if self.fs is None:
            if not os.path.isdir(self.path):
                return []
            return sorted(f"{self.path}/{n}" for n in os.listdir(self.path) if _is_shard(n))
        if not self.fs.exists(self.path):
            return []
        return sorted(p for p in self.fs.ls(self.path, detail=False) if _is_shard(p.rsplit("/", 1)[-1]))

    def tables(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        for path in self.files():
            if self.fs is None:
                yield pq.read_table(path, columns=columns)
            else:
                with self.fs.open(path, "rb") as handle:
                    yield pq.read_table(handle, columns=columns)

    def written_paths(self) -> set[str]:
        """Every input path that has its row: what a restarted job skips."""
        done: set[str] = set()
        for table in self.tables(columns=["path"]):
            done.update(table.column("path").to_pylist())
        return done

    def _read_text(self, name: str) -> str | None:
        target = f"{self.path}/{name}"
        if self.fs is None:
            return open(target).read() if os.path.isfile(target) else None
        return self.fs.cat_file(target).decode() if self.fs.exists(target) else None

    def _write_text(self, name: str, text: str) -> None:
        if self.fs is None:
            from visiontune.io import atomic_write_text

            atomic_write_text(f"{self.path}/{name}", text)
        else:
            self.fs.pipe_file(f"{self.path}/{name}", text.encode())


def prediction_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """`Prediction.to_dict()` rows as a shard: the ranked predictions as two lists, other keys as they are."""
    columns: dict[str, list[Any]] = {
        "path": [r["path"] for r in rows],
        "labels": [[p["label"] for p in r["predictions"]] for r in rows],
        "probabilities": [[p["probability"] for p in r["predictions"]] for r in rows],
        "unknown": [r["unknown"] for r in rows],
        "error": [r["error"] for r in rows],
    }
    table = pa.table(columns, schema=PREDICTION_SCHEMA)
    for key in rows[0] if rows else ():
        if key not in ("path", "predictions", "unknown", "error"):  # e.g. a prediction set, when bundles have one
            table = table.append_column(key, pa.array([r[key] for r in rows]))
    return table


def read_predictions(root: str) -> list[dict[str, Any]]:
    """Every row of a prediction job's shards, as `visiontune predict --format json` writes them (sorted by path)."""
    rows = []
    for table in Shards(root).tables():
        for record in table.to_pylist():
            ranked = [{"label": label, "probability": p} for label, p in zip(
                record.pop("labels"), record.pop("probabilities"), strict=True)]  # fmt: skip
            rows.append({"path": record.pop("path"), "predictions": ranked, "unknown": record.pop("unknown"),
                         "error": record.pop("error"), **record})  # fmt: skip
    return sorted(rows, key=lambda r: r["path"])


def _is_shard(name: str) -> bool:
    return name.startswith(PREFIX) and name.endswith(".parquet")


def _is_local(fs: Any) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
