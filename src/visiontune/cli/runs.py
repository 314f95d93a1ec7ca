"""`visiontune runs [DIR]`: the table of run folders; `visiontune runs compare A B ...`: curves and differences."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from typer.core import TyperGroup

from visiontune.cli.console import console, fit_table
from visiontune.runs.summary import SORT_KEYS, RunSummary, find_runs, sort_runs


class _ListByDefault(TyperGroup):
    """`runs DIR` and `runs --sort valid` mean `runs list ...`: only `compare` (and --help) name a subcommand."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_ListByDefault,
    help="List run folders (`runs [DIR]`) or compare runs (`runs compare A B ...`).",
)


@app.command("list")
def list_command(
    folder: Annotated[Path, typer.Argument(help="Folder holding run folders, searched recursively.")] = Path("runs"),
    sort: Annotated[str, typer.Option("--sort", help=f"Order by one of: {', '.join(SORT_KEYS)}.")] = "date",
    reverse: Annotated[bool, typer.Option("--reverse", help="Reverse the order.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per run on stdout.")] = False,
) -> None:
    """A table of the runs under FOLDER (train, features and tune trials), sortable."""
    runs = sort_runs(find_runs(folder), sort, reverse=reverse)
    if json_out:
        for run in runs:
            typer.echo(json.dumps(run.to_dict()))
        return
    if not runs:
        console.print(f"no runs under {folder}")
        return
    print_runs(runs, title=f"Runs in {folder}")


RUN_COLUMNS = ("name", "date", "data", "method", "backbone", "size", "epochs", "valid", "test", "time", "status")
# what a narrow terminal loses first; name, method, size, valid and status always stay
OPTIONAL_COLUMNS = ("date", "data", "backbone", "time", "test", "epochs")


def print_runs(runs: list[RunSummary], *, title: str) -> None:
    table, dropped = fit_table(
        lambda columns: runs_table(runs, title=title, columns=columns),
        RUN_COLUMNS,
        optional=OPTIONAL_COLUMNS,
        target=console,
    )
    console.print(table)
    if dropped:
        hint = "`visiontune runs --json` has every field"
        console.print(f"[dim]left out to fit the terminal: {', '.join(dropped)} ({hint})[/]")


def runs_table(runs: list[RunSummary], *, title: str, columns: Sequence[str] = RUN_COLUMNS) -> Table:
    table = Table(title=title, show_header=True, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        right = column in ("size", "valid", "test", "time")
        table.add_column(column, justify="right" if right else "left", no_wrap=column not in ("data", "backbone"))
    for run in runs:
        cells = {
            "name": run.name,
            "date": f"{run.date:%Y-%m-%d %H:%M}" if run.date else "-",
            "data": run.data,
            "method": run.method,
            "backbone": run.backbone,
            "size": str(run.image_size or "-"),
            "epochs": run.epochs_label,
            "valid": _metric(run.valid, run.monitor),
            "test": _metric(run.test, "valid_accuracy"),
            "time": _duration(run.time_s),
            "status": run.status,
        }
        table.add_row(*(cells[c] for c in columns))
    return table


def _metric(value: float | None, monitor: str) -> str:
    if value is None:
        return "-"
    suffix = {"valid_accuracy": "", "valid_balanced_accuracy": " bal"}.get(
        monitor, f" {monitor.removeprefix('valid_')}"
    )
    return f"{value:.4f}{suffix}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@app.command("compare")
def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Chart of their learning curves (PNG).")] = Path(
        "compare.png"
    ),
) -> None:
    """Plot the runs' validation curves on one chart and print the settings that differ."""
    from visiontune.experiments.compare import compare_runs

    comparison = compare_runs(list(runs), out=out)
    print_runs(comparison.runs, title="Runs compared")
    table = Table(title="Config differences", show_header=True)
    table.add_column("setting")
    names = [r.path.name for r in comparison.runs]
    for name in names:
        table.add_column(name)
    for key, values in comparison.differences.items():
        table.add_row(key, *("-" if v is None else str(v) for v in values))
    if comparison.differences:
        console.print(table)
    else:
        console.print("the configs are the same (apart from where they were written)")
    console.print(f"learning curves: [bold]{comparison.chart}[/]")
    for run, test in zip(comparison.runs[1:], comparison.paired, strict=True):
        console.print(paired_line(comparison.runs[0].path.name, run.path.name, test), highlight=False)


def paired_line(first: str, other: str, test: dict | None) -> str:
    """McNemar's verdict on two runs evaluated on the same images, in one line."""
    if test is None:
        return f"{first} vs {other}: not evaluated on the same images (visiontune evaluate RUN DATA for both)"
    verdict = "differ significantly" if test["significant"] else "do not differ significantly"
    return (
        f"{first} vs {other}: {verdict} on {test['images']} images (McNemar p = {test['p_value']:.3g}; "
        f"right only by {first}: {test['only_a']}, only by {other}: {test['only_b']})"
    )
