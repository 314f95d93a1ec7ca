"""The `visiontune` command: a thin Typer layer over the Python API.

`run()` is the console-script entry point: user errors (VisiontuneError) become one red line
on stderr and the error's exit code, never a traceback.
"""

from __future__ import annotations

import errno
import sys
from typing import Annotated

import typer

from visiontune.cli import clean, datasets, distributed, evaluate, inspect, models, predict, train
from visiontune.cli import export as export_cli
from visiontune.cli import runs as runs_cli
from visiontune.cli import serve as serve_cli
from visiontune.cli import tune as tune_cli
from visiontune.cli.console import print_error, setup_logging
from visiontune.errors import VisiontuneError
from visiontune.io import DISK_FULL, os_errno, output_error
from visiontune.version import __version__


# Typer >= 0.25 vendors its own click; older releases raise click's classes. Catch both.
def _click_classes(name: str) -> tuple[type[Exception], ...]:
    found = {c for c in typer.BadParameter.__mro__ if c.__name__ == name}
    try:
        import click

        found.add(getattr(click, name))
    except ImportError:
        pass
    return tuple(found)


_CLICK_ERRORS = _click_classes("ClickException")
_USAGE_ERRORS = _click_classes("UsageError")

app = typer.Typer(
    name="visiontune",
    help="Turn a folder of labelled images into a trained, evaluated and served image classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(datasets.app, name="datasets")
app.command("inspect")(inspect.inspect_command)
app.command("train")(train.train_command)
app.command("models")(models.models_command)
app.command("predict")(predict.predict_command)
app.command("evaluate")(evaluate.evaluate_command)
app.add_typer(runs_cli.app, name="runs")
app.command("tune")(tune_cli.tune_command)
app.command("export")(export_cli.export_command)
app.command("serve")(serve_cli.serve_command)
app.command("embed")(distributed.embed_command)
app.command("clean")(clean.clean_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"visiontune {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    setup_logging(quiet=quiet, verbose=verbose)


def run() -> None:
    """Entry point: map VisiontuneError to a one-line message and its exit code."""
    try:
        result = app(standalone_mode=False)
    except VisiontuneError as exc:
        print_error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # outside a command (Typer answers one with a silent 130: see console.says_stopped)
        print_error("interrupted")
        sys.exit(130)
    except OSError as exc:  # a write outside visiontune's own writers (a plot library's): still one line, exit 7
        code = os_errno(exc)
        if code not in (*DISK_FULL, errno.EROFS):
            raise
        error = output_error(exc.filename or "output", code, exc)
        print_error(str(error))
        sys.exit(error.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print_error("aborted")
        sys.exit(1)
    except _CLICK_ERRORS as exc:  # usage errors arrive here in non-standalone mode
        hint = " (see --help)" if isinstance(exc, _USAGE_ERRORS) else ""
        print_error(exc.format_message() + hint)
        sys.exit(exc.exit_code)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    run()
