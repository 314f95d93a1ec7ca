"""The CLI's console, progress bars and error printing; library code never prints."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)


def setup_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """Library warnings (a skipped file, a fallback) go to stderr as one line each."""
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    handler = RichHandler(console=err_console, show_time=False, show_path=verbose, markup=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


@contextmanager
def progress_bar(
    description: str, *, quiet: bool = False
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """Yields (advance(n), set_total(n)) callbacks for the library's progress hooks."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=quiet,
    )
    task = progress.add_task(description, total=None)
    with progress:
        yield (lambda n: progress.advance(task, n)), (lambda n: progress.update(task, total=n))
