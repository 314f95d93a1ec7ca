"""`visiontune models`: the backbones that can be trained, and where their weights come from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.columns import Columns
from rich.table import Table

from visiontune.cli.console import console

if TYPE_CHECKING:
    from visiontune.models import BackboneSpec


def models_command(
    pattern: Annotated[
        str | None,
        typer.Argument(help="List the timm names matching this pattern, e.g. 'resnet*' or 'convnext' (implies --all)."),
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="Also list every timm architecture name (weights online or --weights).")
    ] = False,
) -> None:
    """List the backbones: offline-pretrained, scratch baselines, and (with --all) timm's names."""
    import timm  # heavy imports here keep `visiontune --help` fast

    from visiontune.models import list_backbones

    console.print(_backbone_table(list_backbones()))
    console.print(
        "Any timm model name works too (e.g. resnet18, convnext_tiny): pretrained weights come from the"
        " Hugging Face hub when online, or from a local file with --weights FILE."
    )
    if all_models or pattern:
        names = timm.list_models(_glob(pattern))
        console.print(f"\n[bold]{len(names)} timm architectures[/]" + (f" matching {pattern!r}" if pattern else ""))
        console.print(Columns(names, equal=True, column_first=True))


def _backbone_table(specs: list[BackboneSpec]) -> Table:
    table = Table(title="visiontune backbones")
    for column in ("name", "params (M)", "default size", "weights", "description"):
        table.add_column(column, justify="right" if column.startswith(("params", "default")) else "left")
    for spec in specs:
        size = f"{spec.default_size} px"
        table.add_row(spec.name, f"{_backbone_millions(spec):.2f}", size, spec.weights_status(), spec.description)
    return table


def _backbone_millions(spec: BackboneSpec) -> float:
    """Backbone parameters (no classifier), counted on the meta device: no memory, no weights read."""
    import torch

    from visiontune.models import build_backbone

    with torch.device("meta"):
        backbone = build_backbone(spec, image_size=(spec.default_size, spec.default_size))
    return sum(p.numel() for p in backbone.parameters()) / 1e6


def _glob(pattern: str | None) -> str:
    if not pattern:
        return ""
    return pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
