"""Shared matplotlib helpers (Agg backend: no display needed): atomic PNGs, learning curves, the LR range test."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt

from visiontune.io import atomic_path


def save_png(fig: Any, path: str | Path) -> Path:
    """Write `fig` as a PNG atomically and close it; returns the path."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_history(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Loss (train and valid) and accuracy per epoch; the frozen/unfrozen boundary marked."""
    epochs = [int(r["epoch"]) for r in rows]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [float(r["train_loss"]) for r in rows], "o-", label="train")
    loss_ax.plot(epochs, [float(r["valid_loss"]) for r in rows], "o-", label="valid")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    acc_ax.plot(epochs, [float(r["valid_accuracy"]) for r in rows], "o-", label="accuracy")
    acc_ax.plot(epochs, [float(r["valid_balanced_accuracy"]) for r in rows], "s--", label="balanced accuracy")
    acc_ax.set(xlabel="epoch", ylabel="valid", title="Validation accuracy")
    for ax in (loss_ax, acc_ax):
        for prev, row in itertools.pairwise(rows):
            if prev["phase"] != row["phase"]:
                ax.axvline(float(prev["epoch"]) + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    save_png(fig, path)


def plot_lr_find(result: Any, path: str | Path) -> None:
    """Smoothed loss against learning rate (log scale) with the suggested rate marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses)
    ax.axvline(result.suggestion, color="red", linestyle="--", label=f"suggested {result.suggestion:.2e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)", title="Learning-rate finder")
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, path)
