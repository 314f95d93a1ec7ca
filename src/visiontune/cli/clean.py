"""`visiontune clean DATA`: rank the images whose labels look wrong; review them in a page, or accept the sure ones."""

from __future__ import annotations

import sys
import webbrowser
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from visiontune.cli import options
from visiontune.cli.console import console, progress_bar
from visiontune.config import DataConfig

Opt = typer.Option


def clean_command(
    data: Annotated[str, typer.Argument(help="Image folder (class or split folders) or a CSV/TSV of path,label.")],
    model: Annotated[
        str, Opt("--model", "-m", help="Backbone name (frozen, pretrained) or a run / bundle folder to embed with.")
    ] = "efficientnet_lite0",
    folds: Annotated[int, Opt("--folds", min=2, max=20, help="Cross-validation folds.")] = 5,
    image_size: Annotated[
        int | None, Opt("--image-size", min=8, max=4096, help="Embed at this size (default: the backbone's own).")
    ] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="Folder for issues.csv, clean.json and the grids.")] = None,
    review: Annotated[bool, Opt("--review", help="Then open the review page on 127.0.0.1 (Ctrl-C to stop).")] = False,
    port: Annotated[int, Opt("--port", min=1, max=65535, help="The review page's port.")] = 8765,
    open_browser: Annotated[bool, Opt("--open/--no-open", help="Open the review page in a browser.")] = True,
    apply_suggestions: Annotated[
        bool, Opt("--apply-suggestions", help="Write the confident suggestions to corrections.csv (marked automatic).")
    ] = False,
    min_score: Annotated[
        float, Opt("--min-score", min=0.0, max=1.0, help="--apply-suggestions: least score (1 - p(given label)).")
    ] = 0.9,
    corrections: options.Corrections = None,
    label_regex: options.LabelRegex = None,
    seed: options.Seed = 42,
    quiet: Annotated[bool, Opt("--quiet", help="Only the summary line.")] = False,
) -> int:
    """Find likely label errors, outliers, conflicting duplicates and ambiguous images, with suggested labels.

    Out-of-fold probabilities from a head on frozen features (cached: seconds after the first run), then
    cleanlab's confident learning. Writes DIR/issues.csv, clean.json, suspects.png, top_suspects.png.
    """
    from visiontune.cleaning import apply_suggestions as write_suggestions
    from visiontune.cleaning import clean

    config = DataConfig(source=data, label_regex=label_regex, valid_pct=0.2, seed=seed, corrections=corrections)
    out_dir = out if out is not None else _default_out(data)
    with progress_bar("embedding images", quiet=quiet) as (advance, set_total):
        result = clean(data, config, model=model, folds=folds, seed=seed, image_size=image_size,
                       out_dir=out_dir, progress=advance, on_total=set_total)  # fmt: skip
    if not quiet:
        render(result)
    counts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in result.kind_counts().items()) or "no issues"
    console.print(f"{len(result.data.samples)} images: {counts}; label health {result.health.score:.3f} "
                  f"({result.timings['total_s']:.1f} s). Issues: {result.files['issues']}", soft_wrap=True)  # fmt: skip
    if apply_suggestions:
        rows = write_suggestions(result, min_score=min_score, corrections=corrections)
        console.print(f"wrote {len(rows)} automatic corrections (min score {min_score:g}) to "
                      f"{result.corrections_path(corrections)}", soft_wrap=True)  # fmt: skip
    if review:
        _serve(result, result.corrections_path(corrections), port=port, open_browser=open_browser)
    return 0


def _default_out(data: str) -> Path:
    source = Path(data).resolve()
    return source.with_name(f"{source.stem}-clean")


def render(result: Any) -> None:
    table = Table(title=f"{result.data.root}: suspected label errors per class ({result.folds}-fold, {result.model})")
    for column in ("class", "images", "suspected errors", "estimated noise rate"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in result.health.classes:
        table.add_row(row["class"], str(row["images"]), str(row["suspected_errors"]), f"{row['noise_rate']:.1%}")
    table.caption = f"cleanlab estimates {result.health.estimated_errors} wrong labels"
    console.print(table)
    if result.health.overlaps:
        pairs = "; ".join(f"{o['class_a']} / {o['class_b']} ({o['images']})" for o in result.health.overlaps[:5])
        console.print(f"classes that overlap most: {pairs}", highlight=False, soft_wrap=True)
    if result.data.corrections:
        console.print(result.data.corrections.describe(), highlight=False, soft_wrap=True)
    console.print(f"grids: {result.files['suspects']}, {result.files['top_suspects']}", highlight=False, soft_wrap=True)


def _serve(result: Any, corrections: Path, *, port: int, open_browser: bool) -> None:
    from visiontune.cleaning.review import Review, create_review_app
    from visiontune.cli.serve import check_port

    host = "127.0.0.1"
    check_port(host, port)
    app = create_review_app(Review.of(result, corrections), host=host)
    import uvicorn

    url = f"http://{host}:{port}/"
    console.print(f"review page: {url} (decisions go to {corrections}; Ctrl-C to stop)", soft_wrap=True)
    if open_browser and sys.stdout.isatty():
        webbrowser.open(url)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
