"""The CLI's console, progress bars and error printing; library code never prints."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import typer
from rich.console import Console, ConsoleDimensions
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class _Console(Console):
    """A console that prints to a file or pipe FILE_WIDTH columns wide, where rich would take 80.

    With no terminal on any standard stream (CI, cron, a captured subprocess) rich gives the
    output 80 columns and cuts tables to "…" to fit, though a file has no width. A terminal keeps
    its own width, and COLUMNS, where set, wins everywhere; both are read at each print.
    """

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        unsized = self._width is None and "COLUMNS" not in os.environ and not self.is_terminal
        if unsized and not any(_is_terminal(fd) for fd in (0, 1, 2)):
            return ConsoleDimensions(FILE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


FILE_WIDTH = 160


def _is_terminal(fd: int) -> bool:
    try:
        os.get_terminal_size(fd)
    except (OSError, ValueError):
        return False
    return True


console = _Console()
err_console = _Console(stderr=True)


def fit_table(
    build: Callable[[Sequence[str]], Table],
    columns: Sequence[str],
    *,
    optional: Sequence[str],
    target: Console,
) -> tuple[Table, list[str]]:
    """`build(columns)` with `optional` columns left out, in that order, until it fits the console; and those left out.

    Rich fits a wide table into a narrow terminal by cutting every column alike, numbers included
    ("0.…"); a table with fewer whole columns says more.
    """
    unbounded = target.options.update_width(1_000_000)  # the table's own width, not clamped to the console's
    kept, dropped = list(columns), []
    table = build(kept)
    for header in (h for h in optional if h in columns):
        if target.measure(table, options=unbounded).maximum <= target.width:
            break
        kept.remove(header)
        dropped.append(header)
        table = build(kept)
    return table, dropped


def setup_logging(*, quiet: bool = False, verbose: bool = False) -> None:
    """Library warnings (a skipped file, a fallback) go to stderr as one line each."""
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    handler = RichHandler(console=err_console, show_time=False, show_path=verbose, markup=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


@contextmanager
def says_stopped() -> Iterator[None]:
    """Ctrl-C as one line saying what was kept and how to continue, exit 130 (Typer would exit without a word)."""
    try:
        yield
    except KeyboardInterrupt as exc:  # an `errors.Interrupted` carries the message
        print_error(str(exc) or "interrupted")
        raise typer.Exit(130) from None


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
