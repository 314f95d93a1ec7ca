"""Options shared by the commands that read a data set (their DataConfig fields)."""

from __future__ import annotations

from typing import Annotated

import typer

LabelRegex = Annotated[
    str | None,
    typer.Option("--label-regex", help=r"Labels from file names: a regex with one group, e.g. '^(.+)_\d+\.jpg$'."),
]
GroupRegex = Annotated[
    str | None,
    typer.Option("--group-regex", help="Keep files whose names share this regex's group on one side of the split."),
]
GroupCol = Annotated[
    str | None, typer.Option("--group-col", help="CSV column whose values are kept on one side of the split.")
]
ValidPct = Annotated[
    float, typer.Option("--valid-pct", min=0.0, max=0.9, help="Validation share when the data has no valid split.")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the split, sampling and training.")]
Corrections = Annotated[
    str | None,
    typer.Option("--corrections", help="corrections.csv to apply (default: DATA's own, if any; 'none': off)."),
]
