"""`visiontune predict MODEL SOURCE --ray ADDRESS --out DIR` and `visiontune embed DATA --ray ADDRESS --out DIR`.

The Ray side of the CLI: list the inputs, call `predict.distributed`, say what was written. Ray
is imported only here and only with --ray, so `visiontune` without the `ray` extra works as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from visiontune.cli.console import console, err_console, progress_bar, says_stopped
from visiontune.cli.run_options import sections, with_run_options

Opt = typer.Option
PARTIAL_FAILURE = 3
# the worker options of `predict --ray` and `embed`, stated once
Concurrency = Annotated[int | None, Opt(min=1, help="--ray: model workers (default: as the cluster allows).")]
GpusPerWorker = Annotated[float, Opt(min=0, help="--ray: GPUs per model worker (0: CPU workers).")]
CpusPerWorker = Annotated[float, Opt(min=0.01, help="--ray: CPUs per model worker (its torch threads).")]
EMBED_OPTIONS = ("backbone", "weights", "pretrained", "image_size", "resize", "pool", "tta", "precision")


def ray_options(
    address: str, concurrency: int | None, gpus: float, cpus: float, batch_size: int | None
) -> Any:  # RayOptions; Ray itself checked first, so a missing extra is one line before any work
    from visiontune.predict.distributed import RayOptions, require_ray

    require_ray()
    return RayOptions(address, concurrency, gpus, cpus, batch_size)


def list_or_refuse(inputs: list[str]) -> list[str]:
    from visiontune.errors import DatasetError
    from visiontune.predict.locations import list_images

    paths, empty = list_images(inputs)
    for pattern in empty:
        err_console.print(f"[yellow]warning:[/] {pattern}: no image files found", highlight=False)
    if not paths:
        raise DatasetError(f"no images in {', '.join(inputs)}; give image folders, globs, URLs or a table of paths")
    return paths


def predict_on_ray(model: str, inputs: list[str], out: Path | None, options: Any, **settings: Any) -> int:
    """`predict --ray`: Parquet shards in `out`; exit 3 when some inputs of this run could not be read."""
    from visiontune.errors import ConfigError
    from visiontune.predict.distributed import predict_on_ray as run

    if out is None:
        raise ConfigError(
            "--ray writes Parquet shards: give --out FOLDER (the same command again finishes a stopped job)"
        )
    paths = list_or_refuse(inputs)
    with says_stopped(), stopped_keeps(out), progress_bar("predicting on Ray") as (advance, set_total):
        set_total(len(paths))
        result = run(model, paths, str(out), options=options, progress=advance, **settings)
    return _report(result, "predictions")


def embed_command(
    data: Annotated[list[str], typer.Argument(help="Images: folders, globs, a CSV/Parquet of paths, or URLs.")],
    ray: Annotated[str, Opt("--ray", help="auto (this machine's cluster, or a local one) or a head's host:port.")],
    out: Annotated[Path, Opt(help="Folder for the Parquet shards (path, sha256, embedding, error).")],
    cache: Annotated[
        bool, Opt("--cache/--no-cache", help="Also fill the feature cache that `train --method features` reads.")
    ] = True,
    cache_dir: Annotated[
        Path | None, Opt(help="The feature cache's folder (default ~/.cache/visiontune/features).")
    ] = None,
    batch_size: Annotated[
        int | None, Opt(min=1, help="Images per Ray batch and Parquet shard (default 128 on GPUs, 64 on CPUs).")
    ] = None,
    concurrency: Concurrency = None,
    num_gpus_per_worker: GpusPerWorker = 0.0,
    num_cpus_per_worker: CpusPerWorker = 1.0,
    **options: Any,
) -> int:
    """Backbone embeddings of many images on a Ray cluster, for `train --method features` and label cleaning."""
    from visiontune.config import ModelConfig
    from visiontune.predict.distributed import cache_embeddings, embed_on_ray

    settings = ray_options(ray, concurrency, num_gpus_per_worker, num_cpus_per_worker, batch_size)
    typed = sections(options, EMBED_OPTIONS)
    model = ModelConfig(**{k: v for k, v in typed["model"].items() if v is not None})
    paths = list_or_refuse(data)
    with says_stopped(), stopped_keeps(out), progress_bar("embedding on Ray") as (advance, set_total):
        set_total(len(paths))
        result, recipe = embed_on_ray(
            paths,
            str(out),
            model=model,
            tta=bool(typed["features"]["tta"]),
            precision=typed["train"]["precision"] or "auto",
            options=settings,
            progress=advance,
        )
    code = _report(result, "embeddings")
    if cache:
        added = cache_embeddings(str(out), recipe, str(cache_dir) if cache_dir else None)
        console.print(f"{added} new vectors in the feature cache (train --method features reuses them)")
    return code


with_run_options(embed_command, EMBED_OPTIONS)


@contextmanager
def stopped_keeps(out: Path) -> Iterator[None]:
    """Ctrl-C: what was written stays, and the same command finishes the rest."""
    from visiontune.errors import Interrupted

    try:
        yield
    except KeyboardInterrupt as exc:
        raise Interrupted(
            f"stopped; the rows written so far are kept in {out}: run the same command to finish"
        ) from exc


def _report(result: Any, what: str) -> int:
    skipped = f", {result.skipped} already there" if result.skipped else ""
    console.print(
        f"{result.written} {what} written to {result.out} in {result.seconds:.1f} s "
        f"({result.workers} workers{skipped})",
        highlight=False,
    )
    if result.failed:
        err_console.print(f"[red]{result.failed} of {result.written} inputs could not be read[/]", highlight=False)
        return PARTIAL_FAILURE
    return 0
