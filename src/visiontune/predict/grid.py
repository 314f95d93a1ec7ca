"""`predict --grid out.png`: the images with their top-3, to see at a glance what the model said."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

from visiontune.data.images import open_image
from visiontune.errors import ImageError
from visiontune.predict.predictor import Prediction

MAX_IMAGES = 64


def plot_prediction_grid(predictions: Sequence[Prediction], path: str | Path, *, columns: int = 4) -> int:
    """Draw up to MAX_IMAGES predicted files with their top-3 (unknowns in orange, errors in red); returns how many."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from visiontune.io import atomic_path

    shown = [p for p in predictions if p.path is not None][:MAX_IMAGES]
    if not shown:
        return 0
    columns = min(columns, len(shown))
    rows = math.ceil(len(shown) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, prediction in zip(axes.flat, shown, strict=False):
        with contextlib.suppress(ImageError, OSError):  # the caption says what went wrong
            ax.imshow(open_image(prediction.path, draft_size=(256, 256)))
        ax.set_title(_caption(prediction), fontsize=8, color=_colour(prediction), loc="left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return len(shown)


def _caption(prediction: Prediction) -> str:
    name = "/".join(Path(prediction.path or "").parts[-2:])
    if prediction.error:
        return f"{name}\nerror: {prediction.error}"
    lines = [f"{p['label'][:28]} {p['probability']:.2f}" for p in prediction.predictions[:3]]
    if prediction.unknown:
        lines[0] = f"unknown (best guess {lines[0]})"
    return "\n".join([name, *lines])


def _colour(prediction: Prediction) -> str:
    return "firebrick" if prediction.error else "darkorange" if prediction.unknown else "black"
