"""The experiment charts, as PNG (matplotlib's Agg backend: no display needed), each saved atomically.

Imported only when a chart is drawn, so `visiontune --help` never loads matplotlib.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from visiontune.plots import save_png


def plot_learning_curves(curves: Sequence[tuple[str, list[dict[str, Any]], Any]], path: Path) -> Path:
    """Validation accuracy and loss per epoch, one line per run; a features run (no epochs) is a dashed level.

    `curves` holds (label, metrics.csv rows, RunSummary) per run.
    """
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    last_epoch = max([int(r["epoch"]) for _, rows, _ in curves for r in rows] or [1])
    for index, (label, rows, run) in enumerate(curves):
        color = f"C{index % 10}"
        if rows:
            epochs = [int(r["epoch"]) for r in rows]
            acc_ax.plot(epochs, [r["valid_accuracy"] for r in rows], "o-", color=color, label=label)
            loss_ax.plot(epochs, [r["valid_loss"] for r in rows], "o-", color=color, label=label)
        elif run.valid is not None and run.monitor != "valid_loss":
            acc_ax.hlines(run.valid, 1, last_epoch, colors=color, linestyles="--", label=f"{label} (frozen features)")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    loss_ax.set(xlabel="epoch", ylabel="validation loss", title="Validation loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return save_png(fig, path)


def plot_grid(rows: Sequence[dict[str, Any]], key: str, metric: str, path: Path) -> Path:
    """The grid study chart: the validation metric (left axis) and time per epoch (right axis) against `key`.

    `rows` are finished trials with `key`, `value`, and `epoch_s` (their fastest all-layers epoch;
    features trials, which have no epochs, give their whole run time instead, and the axis says so). Several trials
    at one grid value (other grid keys varying) are drawn as separate points.
    """
    rows = sorted(rows, key=lambda r: _order(r[key]))
    labels = list(dict.fromkeys(str(r[key]) for r in rows))
    numeric = all(isinstance(r[key], int | float) for r in rows)  # sizes on a true scale; names evenly spaced
    x = [r[key] if numeric else labels.index(str(r[key])) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [r["value"] for r in rows], "o-", color="C0", label=f"validation {metric}")
    ax.set(xlabel=key.replace("_", " "), ylabel=f"validation {metric}")
    ax.set_xticks(sorted(set(x)) if numeric else range(len(labels)), labels)
    ax.grid(alpha=0.3)
    per_epoch = all(r.get("epoch_s") is not None for r in rows)
    times = [r["epoch_s"] if per_epoch else r.get("elapsed_s") for r in rows]
    twin = ax.twinx()
    twin.plot(x, times, "s--", color="C1", label="time per epoch (s)" if per_epoch else "time per trial (s)")
    twin.set_ylabel("seconds per epoch" if per_epoch else "seconds per trial")
    twin.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize="small")
    ax.set_title(f"Validation {metric} and time against {key.replace('_', ' ')}")
    return save_png(fig, path)


def _order(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def plot_optuna(kind: str, study: Any, path: Path) -> Path:
    """Optuna's own matplotlib plot: `importance` (fANOVA parameter importances) or `history`.

    Optuna switches matplotlib to its ggplot style sheet globally; `rc_context` puts the settings
    back afterwards, so the charts drawn after it (and a Python user's own) keep theirs.
    """
    from optuna.visualization import matplotlib as optuna_plots

    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        plot = optuna_plots.plot_param_importances if kind == "importance" else optuna_plots.plot_optimization_history
        return save_png(plot(study).figure, path)
