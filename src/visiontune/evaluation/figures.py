"""The evaluation's figures: confusion matrix, image grids (top losses, Grad-CAM), reliability, OOD scores.

Matplotlib's Agg backend (no display needed) through `plots`, each PNG saved atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from visiontune.calibration import reliability_bins
from visiontune.plots import plt, save_png

WRONG, RIGHT = "#b42318", "#1d6b3a"  # title colours of mistaken and correct images
GRID_COLUMNS = 6


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: str | Path) -> None:
    """Counts (left) and row-normalised shares, i.e. each class's recall on the diagonal (right)."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    side = max(4.0, 0.42 * len(classes) + 2.2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side))
    for ax, values, title, fmt in (
        (axes[0], matrix, "Counts", "d"),
        (axes[1], shares, "Normalised by actual class", ".2f"),
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set(title=title, xlabel="predicted", ylabel="actual")
        ticks = range(len(classes))
        ax.set_xticks(ticks, [_short(c) for c in classes], rotation=45, ha="right")
        ax.set_yticks(ticks, [_short(c) for c in classes])
        if len(classes) <= 30:
            _annotate(ax, values, fmt)
    fig.tight_layout()
    save_png(fig, path)


def _annotate(ax: plt.Axes, values: np.ndarray, fmt: str) -> None:
    """Write each cell's value, white on dark cells; zeros are left blank so mistakes stand out."""
    peak = values.max() if values.size and values.max() > 0 else 1
    size = 9 if len(values) <= 12 else 7
    for (row, col), value in np.ndenumerate(values):
        if value:
            colour = "white" if value > peak * 0.55 else "#1f2937"
            ax.text(col, row, format(value, fmt), ha="center", va="center", color=colour, fontsize=size)


def plot_image_grid(
    images: torch.Tensor,
    titles: Sequence[str],
    path: str | Path,
    *,
    wrong: Sequence[bool] | None = None,
    heat: torch.Tensor | None = None,
) -> None:
    """(N, 3, H, W) images in 0..1 with a title each; `heat` (N, H, W) in 0..1 is overlaid as a heat map."""
    count = len(images)
    cols = min(GRID_COLUMNS, max(count, 1))
    rows = max(1, math.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.95 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= count:
            continue
        ax.imshow(images[index].permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        if heat is not None:
            ax.imshow(_heat_rgba(heat[index]), interpolation="bilinear")
        colour = WRONG if wrong is not None and wrong[index] else RIGHT
        ax.set_title(titles[index], fontsize=8.5, color=colour, loc="left")
    fig.tight_layout()
    save_png(fig, path)


def plot_reliability(targets: torch.Tensor, before: torch.Tensor, after: torch.Tensor | None, path: str | Path) -> None:
    """Accuracy against confidence per bin (calibrated: on the diagonal), and how many images each bin holds.

    `before` / `after` are (N, K) probabilities without and with temperature scaling; `after` None
    when the temperature is 1 (the two curves would coincide).
    """
    fig, (curve, hist) = plt.subplots(2, 1, figsize=(5.2, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1.1]})
    curve.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    series = [("raw model", before, "#6b7280")]
    if after is not None:
        series.append(("temperature-scaled", after, "#2563eb"))
    width = 1 / 15 / (len(series) + 0.4)  # the bars of each bin side by side
    for k, (label, probs, colour) in enumerate(series):
        bins = [b for b in reliability_bins(probs, targets) if b["count"]]
        curve.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color=colour, label=label)
        centres = [(b["low"] + b["high"]) / 2 + (k - (len(series) - 1) / 2) * width for b in bins]
        hist.bar(centres, [b["count"] for b in bins], width=width, color=colour, alpha=0.85)
    curve.set(ylabel="accuracy", title="Reliability", xlim=(0, 1), ylim=(0, 1.02))
    curve.grid(alpha=0.3)
    curve.legend(loc="upper left", fontsize=8)
    hist.set(xlabel="confidence (top probability)", ylabel="images")
    hist.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def plot_ood_scores(
    known: torch.Tensor, unknown: torch.Tensor, *, score: str, threshold: float | None, path: str | Path
) -> None:
    """Histograms of the unknown score on in-distribution and OOD images, the threshold marked."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    values = torch.cat([known, unknown]).double().numpy()
    edges = np.linspace(values.min(), values.max(), 31) if values.max() > values.min() else 30
    ax.hist(known.double().numpy(), bins=edges, alpha=0.6, color="#2563eb", label="evaluation images", density=True)
    ax.hist(unknown.double().numpy(), bins=edges, alpha=0.6, color="#d97706", label="OOD images", density=True)
    if threshold is not None:
        ax.axvline(threshold, color="#b42318", linestyle="--", label=f"unknown below {threshold:.3g}")
    ax.set(xlabel=f"{score} score (higher = more familiar)", ylabel="density", title="Unknown score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def _heat_rgba(heat: torch.Tensor) -> np.ndarray:
    """(H, W) in 0..1 -> (H, W, 4) colours whose opacity follows the heat: cold regions show the image as it is."""
    values = heat.clamp(0, 1).cpu().numpy()
    rgba = plt.get_cmap("jet")(values)
    rgba[..., 3] = 0.7 * values
    return rgba


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
