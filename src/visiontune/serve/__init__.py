"""The HTTP service and its web page: `visiontune serve MODEL`.

Needs only the bundle and the inference libraries (FastAPI, uvicorn, python-multipart, and
onnxruntime for `backend="onnx"`), never the training code.

Example:
    >>> from visiontune.serve import ServeConfig, create_app
    >>> app = create_app(ServeConfig(model="runs/demo"))  # doctest: +SKIP
"""

from __future__ import annotations

from visiontune.serve.app import ServeConfig, create_app
from visiontune.serve.batching import DynamicBatcher

__all__ = ["DynamicBatcher", "ServeConfig", "create_app"]
