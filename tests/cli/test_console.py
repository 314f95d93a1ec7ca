"""Tables on a narrow terminal keep whole columns; output to a file or pipe is not cut to 80 columns."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from rich.table import Table

from visiontune.cli import tune as tune_cli
from visiontune.cli.console import FILE_WIDTH, fit_table

REPO = Path(__file__).resolve().parents[2]
ROWS = [("trial-0000", "2026-12-01 15:27", "efficientnet_lite0", "0.8883", "done")] * 3
HEADERS = ("name", "date", "backbone", "valid", "status")


def build(columns: Sequence[str]) -> Table:
    table = Table()
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in ROWS:
        table.add_row(*(cell for cell, header in zip(row, HEADERS, strict=True) if header in columns))
    return table


def render(table: Table, width: int) -> str:
    target = Console(width=width, file=io.StringIO())
    target.print(table)
    return target.file.getvalue()


def test_fit_table_leaves_out_optional_columns_in_order_until_the_table_fits() -> None:
    wide = Console(width=200, file=io.StringIO())
    table, dropped = fit_table(build, HEADERS, optional=("date", "backbone"), target=wide)
    assert dropped == [] and [c.header for c in table.columns] == list(HEADERS)

    narrow = Console(width=50, file=io.StringIO())
    table, dropped = fit_table(build, HEADERS, optional=("date", "backbone"), target=narrow)
    assert dropped == ["date", "backbone"]
    assert [c.header for c in table.columns] == ["name", "valid", "status"]
    text = render(table, 50)
    assert "0.8883" in text and "trial-0000" in text and "…" not in text  # what is left is whole

    middle = Console(width=60, file=io.StringIO())  # leaving out the date is enough
    assert fit_table(build, HEADERS, optional=("date", "backbone"), target=middle)[1] == ["date"]
    assert "…" in render(build(HEADERS), 60)  # what rich alone would have printed: cells cut


def trial_row(number: int, method: str, size: int, value: float, lr: float | None) -> dict:
    return {
        "number": number, "state": "complete", "value": value, "method": method, "backbone": "efficientnet_lite0",
        "image_size": size, "lr": lr, "freeze_epochs": 1 if lr else None, "label_smoothing": 0.1 if lr else None,
        "augment": "light" if lr else None, "rotation": 15.0 if lr else None, "epoch_s": 2.5 if lr else None,
    }  # fmt: skip


def test_the_trials_table_fits_80_columns_with_whole_numbers_and_says_what_it_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [trial_row(0, "features", 32, 0.6833, None), trial_row(1, "finetune", 96, 0.7512, 0.000613)]
    result = SimpleNamespace(
        study_name="s", monitor="accuracy", rows=rows, best={"number": 1, "value": 0.7512}, files={}
    )
    target = Console(width=80, file=io.StringIO())
    monkeypatch.setattr(tune_cli, "console", target)
    tune_cli._print_result(result)
    text = target.file.getvalue()
    assert "…" not in text
    assert "0.6833" in text and "0.7512" in text and "features" in text and "finetune" in text
    # the backbone is the same in every trial: one line, not a column
    assert "the same in every trial: backbone=efficientnet_lite0" in text
    assert "left out to fit the terminal:" in text and "trials.csv" in text


def test_output_with_no_terminal_is_file_width_not_80_columns() -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = str(REPO / "src")
    code = "from visiontune.cli.console import console, err_console; print(console.width, err_console.width)"
    run = {"capture_output": True, "text": True, "check": True, "stdin": subprocess.DEVNULL}  # no terminal at all
    piped = subprocess.run([sys.executable, "-c", code], env=env, **run)
    assert piped.stdout.split() == [str(FILE_WIDTH)] * 2
    told = subprocess.run([sys.executable, "-c", code], env={**env, "COLUMNS": "90"}, **run)
    assert told.stdout.split() == ["90", "90"]  # COLUMNS still wins
