"""Export a bundle for deployment: an ONNX graph with its preprocessing and classes, checked and optionally int8.

Example:
    >>> from visiontune.export import ExportConfig, export_model
    >>> report = export_model("runs/demo", ExportConfig(out="demo.onnx"))  # doctest: +SKIP
    >>> report.parity.max_abs_diff  # doctest: +SKIP
"""

from __future__ import annotations

from visiontune.export.run import ExportConfig, ExportReport, QuantReport, export_model, int8_path

__all__ = ["ExportConfig", "ExportReport", "QuantReport", "export_model", "int8_path"]
