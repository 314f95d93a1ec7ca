"""visiontune: a folder of labelled images in, a trained, evaluated and served classifier out."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
