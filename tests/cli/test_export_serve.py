"""`visiontune export` and `visiontune serve` as a user runs them: printed checks, one-line errors."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import onnx
import pytest

from tests.cli.test_cli import assert_one_line_error, visiontune


@pytest.mark.slow  # 18.6 s measured; int8 and parity are checked in-process by tests/export/test_onnx.py
def test_export_prints_parity_accuracies_and_int8_figures(finetuned_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "fashion.onnx"
    proc = visiontune("export", str(finetuned_run), "--out", str(out), "--quantize", "int8")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # rich may wrap long lines
    assert f"exported {out}" in text and "dynamic batch" in text
    diff = float(re.search(r"max \|PyTorch - ONNX\| = (\S+)", text).group(1))  # type: ignore[union-attr]
    assert diff <= 1e-4
    accuracies = re.search(r"accuracy: PyTorch ([\d.]+)%, ONNX ([\d.]+)%", text)
    assert accuracies and accuracies.group(1) == accuracies.group(2)
    int8 = out.with_name("fashion.int8.onnx")
    assert f"int8: {int8}" in text and "x smaller" in text and "images/s" in text and "agreement with float" in text
    assert int8.stat().st_size < out.stat().st_size / 2
    quantized = onnx.load(str(int8))
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    assert "quantization" in {p.key for p in quantized.metadata_props}
    assert sorted(p.name for p in out.parent.iterdir()) == ["fashion.int8.onnx", "fashion.onnx"]  # no temporaries


def test_export_and_serve_refusals_are_one_line(finetuned_run: Path, tmp_path: Path) -> None:
    """Checked before any model is loaded; the API tests cover the other refusals (same errors, same lines)."""
    assert_one_line_error(
        visiontune("export", str(finetuned_run), "--quantize", "int4"), "`quantize` must be one of", "int4"
    )
    assert_one_line_error(visiontune("serve", str(tmp_path / "nope.onnx")), "no such ONNX file", "visiontune export")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_one_line_error(visiontune("serve", str(finetuned_run), "--port", port), "can't listen", "--port")
