"""`visiontune inspect DATA`: the data audit as tables, plus inspect.json and sample grids."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from visiontune.cli import options
from visiontune.cli.console import console, progress_bar
from visiontune.config import DataConfig
from visiontune.data.audit import AuditReport, inspect_data

MAX_LISTED = 20  # paths shown per finding in the terminal; inspect.json has them all


def inspect_command(
    data: Annotated[str, typer.Argument(help="Image folder (class or split folders) or a CSV/TSV of path,label.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for inspect.json and samples_<split>.png.")
    ] = None,
    label_regex: options.LabelRegex = None,
    group_regex: options.GroupRegex = None,
    group_col: options.GroupCol = None,
    valid_pct: options.ValidPct = 0.2,
    seed: options.Seed = 42,
    corrections: options.Corrections = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Only the summary line.")] = False,
) -> int:
    """Audit a data set before training: counts, sizes, broken files, duplicates and leakage.

    Exits 0 when the data can be used (warnings included), 3 when it can't.
    """
    config = DataConfig(
        source=data,
        label_regex=label_regex,
        group_regex=group_regex,
        group_col=group_col,
        valid_pct=valid_pct,
        seed=seed,
        sample=1.0,
        corrections=corrections,
    )
    out_dir = out if out is not None else _default_out(data)
    with progress_bar("reading images", quiet=quiet) as (advance, set_total):
        report = inspect_data(data, config, out_dir=out_dir, progress=advance, on_total=set_total)
    if not quiet:
        render(report)
    verdict = "[green]usable[/]" if report.ok else "[bold red]NOT usable[/]"
    console.print(
        f"{report.num_files} files, {report.num_images} usable images in {report.elapsed_s:.1f}s "
        f"({report.images_per_s:.0f} images/s): {verdict}, {len(report.warnings)} warning(s). "
        f"Report: {out_dir / 'inspect.json'}"
    )
    return 0 if report.ok else 3


def _default_out(data: str) -> Path:
    source = Path(data).resolve()
    return source.with_name(f"{source.stem}-inspect")


def render(report: AuditReport) -> None:
    console.print(_counts_table(report))
    console.print(_sizes_table(report))
    for title, rows in (
        ("Unreadable files (skipped)", [(r["path"], r["reason"]) for r in report.unreadable]),
        ("Unsupported files (ignored)", [(r["path"], r["reason"]) for r in report.unsupported]),
        ("Empty class folders", [(c, "no images") for c in report.empty_classes]),
        ("Symbolic links", [(f["path"], f"-> {f['target']}: {f['note']}") for f in report.links]),
        ("Repeated CSV rows (each file used once)", [(r["path"], r["reason"]) for r in report.repeated_rows]),
        ("Files the CSV lists under two labels (left out)", _conflict_rows(report)),
    ):
        if rows:
            console.print(_list_table(title, rows))
    if report.duplicates:
        console.print(_duplicates_table(report.duplicates))
    for line in report.problems:
        console.print(f"[bold red]problem:[/] {line}", highlight=False)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    for split, path in report.grids.items():
        console.print(f"sample grid ({split}): {path}")


def _conflict_rows(report: AuditReport) -> list[tuple[str, str]]:
    return [
        (c["path"], f"labels {', '.join(c['labels'])} on lines {', '.join(map(str, c['lines']))}; remove one row")
        for c in report.label_conflicts
    ]


def _counts_table(report: AuditReport) -> Table:
    splits = list(report.counts)
    table = Table(title=f"{report.root} ({report.source_kind}): images per class and split")
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for cls in report.classes:
        table.add_row(cls, *(str(report.counts[s].get(cls, 0)) for s in splits), str(report.class_totals.get(cls, 0)))
    totals = [str(sum(report.counts[s].values())) for s in splits]
    table.add_row("[bold]all[/]", *totals, f"[bold]{report.num_images}[/]")
    table.caption = f"imbalance {report.imbalance_ratio:.2f}x, {report.total_bytes / 1e6:.1f} MB"
    return table


def _sizes_table(report: AuditReport) -> Table:
    table = Table(title="Image sizes (pixels)")
    table.add_column("")
    for col in ("min", "median", "max"):
        table.add_column(col, justify="right")
    for name, stats in report.sizes.items():
        table.add_row(name, *(f"{stats.get(k, 0):g}" for k in ("min", "median", "max")))
    modes = ", ".join(f"{k} {v}" for k, v in report.modes.items())
    formats = ", ".join(f"{k} {v}" for k, v in report.formats.items())
    table.caption = (
        f"modes: {modes}; formats: {formats}\nsuggested --image-size {report.suggested_image_size}: "
        f"{report.suggested_image_size_reason}"
    )
    return table


def _list_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=f"{title}: {len(rows)}")
    table.add_column("path")
    table.add_column("reason")
    for path, reason in rows[:MAX_LISTED]:
        table.add_row(path, reason)
    if len(rows) > MAX_LISTED:
        table.add_row(f"... {len(rows) - MAX_LISTED} more in inspect.json", "")
    return table


def _duplicates_table(groups: list[dict[str, Any]]) -> Table:
    table = Table(title=f"Duplicate groups: {len(groups)}")
    for col in ("kind", "scope", "files (label, split)"):
        table.add_column(col)
    for group in groups[:MAX_LISTED]:
        files = "\n".join(f"{f['path']} ({f['label']}, {f['split']})" for f in group["files"])
        table.add_row(group["kind"], group["scope"].replace("_", " "), files)
    if len(groups) > MAX_LISTED:
        table.add_row("", "", f"... {len(groups) - MAX_LISTED} more in inspect.json")
    return table
