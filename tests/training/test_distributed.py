"""Two processes under torchrun (gloo on CPU, loopback): DDP trains one model and rank 0 writes the run."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import write_class_folders
from visiontune.bundle import load_bundle
from visiontune.data.images import open_image
from visiontune.data.transforms import build_transform

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="needs torchrun")
def test_torchrun_two_processes_fine_tune_and_write_one_valid_bundle(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "data", fashion, per_class=24)
    out = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "visiontune", "train", str(data), "--model", "efficientnet_lite0", "--image-size", "32",
        "--epochs", "1", "--freeze-epochs", "1", "--batch-size", "8", "--workers", "0", "--valid-pct", "0.25",
        "--out", str(out), "--json",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = json.loads((out / "run.json").read_text())
    assert run["processes"] == 2
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["phase"] for r in rows] == ["frozen", "unfrozen"]  # one writer: no duplicated rows
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2  # only rank 0 prints

    model, meta = load_bundle(out / "model")
    assert meta.classes == sorted(meta.classes) and len(meta.classes) == 3
    logits = model(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["valid_accuracy"] == pytest.approx(meta.metrics["valid_accuracy"])

    # The two ranks' evaluation shards cover every validation image exactly once: one process
    # scoring the bundle on the same files gets the same accuracy.
    with open(out / "splits.csv") as handle:
        valid = [row for row in csv.DictReader(handle) if row["split"] == "valid"]
    assert len(valid) == 18
    transform = build_transform(meta.preprocessing)
    batch = torch.stack([transform(open_image(row["path"])) for row in valid])
    with torch.no_grad():
        predicted = model(batch).argmax(1).tolist()
    hits = sum(meta.classes[p] == row["label"] for p, row in zip(predicted, valid, strict=True))
    assert hits / len(valid) == pytest.approx(results["metrics"]["valid_accuracy"])
    # The unknown detector's bank: each rank embedded its share of the 54 training images, all gathered.
    assert meta.calibration.detector is not None and len(meta.calibration.detector.bank) == 72 - 18
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"
