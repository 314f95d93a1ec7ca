"""Options shared by the commands that read a data set, and their mapping onto DataConfig."""

from __future__ import annotations

from typing import Annotated

import typer

from visiontune.config import DataConfig

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
Sample = Annotated[
    float, typer.Option("--sample", min=0.0, max=1.0, help="Use a stratified fraction of train/valid, e.g. 0.1.")
]
Corrections = Annotated[
    str | None,
    typer.Option("--corrections", help="corrections.csv to apply (default: DATA's own, if any; 'none': off)."),
]


def data_config(
    source: str,
    *,
    label_regex: str | None,
    group_regex: str | None,
    group_col: str | None,
    valid_pct: float,
    seed: int,
    sample: float,
    corrections: str | None = None,
) -> DataConfig:
    return DataConfig(
        source=source,
        label_regex=label_regex,
        group_regex=group_regex,
        group_col=group_col,
        valid_pct=valid_pct,
        seed=seed,
        sample=sample,
        corrections=corrections,
    )
