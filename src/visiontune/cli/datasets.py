"""`visiontune datasets`: the bundled real data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from visiontune.cli.console import console, progress_bar
from visiontune.data.demo import DATASETS, export_dataset

app = typer.Typer(help="Bundled real data sets for demos and tests.", no_args_is_help=True)


@app.command("list")
def list_datasets() -> None:
    """List the data sets that can be exported."""
    for name in DATASETS:
        console.print(
            f"{name}: 300 train + 100 test images per class bundled; --full: 70,000 (Debian dataset-fashion-mnist)"
        )


@app.command("export")
def export(
    name: Annotated[str, typer.Argument(help=f"Data set name: {', '.join(DATASETS)}.")],
    out: Annotated[Path, typer.Argument(help="Folder to write DIR/train/<class>/*.png and DIR/test/<class>/*.png.")],
    full: Annotated[
        bool, typer.Option("--full", help="All 70,000 images from Debian's dataset-fashion-mnist.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous export in OUT.")] = False,
) -> None:
    """Write a bundled data set as an ordinary image folder."""
    with progress_bar(f"exporting {name}") as (advance, _):
        counts = export_dataset(name, out, full=full, overwrite=overwrite, progress=advance)
    total = sum(counts.values())
    detail = ", ".join(f"{n} {split}" for split, n in counts.items())
    console.print(f"wrote {total} images ({detail}) to [bold]{out}[/]")
