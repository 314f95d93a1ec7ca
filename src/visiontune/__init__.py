"""visiontune: a folder of labelled images in, a trained, evaluated and served classifier out.

Example:
    >>> import visiontune
    >>> predictor = visiontune.load("runs/demo")  # doctest: +SKIP
    >>> predictor.predict(["shoe.png"])[0].label  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visiontune.predict import Predictor

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(source: Any, *, device: Any = "auto", backend: str = "torch") -> Predictor:
    """A `Predictor` for a bundle folder, a run folder (its final bundle), a backbone name or an exported .onnx.

    `backend="onnx"` runs the model in onnxruntime on the CPU (see `visiontune export`).

    Imported lazily, so `import visiontune` (and the CLI's --help) stays light.
    """
    from visiontune.predict import load as load_predictor

    return load_predictor(source, device=device, backend=backend)
