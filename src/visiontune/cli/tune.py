"""`visiontune tune DATA --trials N`: options -> TuneConfig -> visiontune.experiments.tune, a line per trial."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from visiontune.cli.console import console, err_console, fit_table, says_stopped
from visiontune.cli.run_options import sections, with_run_options
from visiontune.config import RunConfig, load_yaml, merge_overrides
from visiontune.errors import Interrupted

Opt = typer.Option


def tune_command(
    data: Annotated[str | None, typer.Argument(help="Image folder (class or split folders) or a CSV/TSV.")] = None,
    trials: Annotated[
        int | None, Opt("--trials", "-n", min=1, help="Finished trials the study ends with (default 20; grid: all).")
    ] = None,
    timeout: Annotated[
        float | None, Opt("--timeout", min=0.0, help="Start no new trial after this many seconds.")
    ] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="Output folder (default runs/tune-<data>).")] = None,
    storage: Annotated[
        str | None, Opt(help="Study database URL, e.g. postgresql://user@host/db (default: OUT/study.db).")
    ] = None,
    study: Annotated[str | None, Opt("--study", help="Study name; workers sharing --storage share it.")] = None,
    grid: Annotated[
        list[str] | None, Opt("--grid", help="Run every value instead of searching, e.g. image_size=32,64,128.")
    ] = None,
    space: Annotated[
        Path | None, Opt("--space", help="YAML search space: lists are choices, {low, high} ranges, null fixes one.")
    ] = None,
    config: Annotated[Path | None, Opt("--config", help="Base run config (YAML) every trial starts from.")] = None,
    prune: Annotated[bool, Opt("--prune/--no-prune", help="Stop poor trials early (median rule).")] = True,
    keep_checkpoints: Annotated[
        bool, Opt("--keep-checkpoints", help="Keep each trial's checkpoints (its model/ bundle is always kept).")
    ] = False,
    quiet: Annotated[bool, Opt("--quiet", help="No line per trial; just the result.")] = False,
    **options: Any,
) -> None:
    """Search hyperparameters with Optuna; run the same command again to resume an interrupted search.

    Searched: learning rate, image size, augmentation and rotation, backbone, freeze epochs, label smoothing, method.

    Narrow it with --space FILE, YAML where a list is a set of choices and {low, high[, log, step]} a range.

    Example space: `image_size: [32, 64]` and `lr: {low: 0.0003, high: 0.003, log: true}`.
    """
    from visiontune.experiments.space import SearchSpace, grid_size, parse_grid
    from visiontune.experiments.tune import TuneConfig, tune

    typed = sections(options, SHARED)  # options typed override the --config file: the same merge as `train --config`
    typed["data"]["source"] = data
    values = merge_overrides(load_yaml(config) if config else {}, typed)
    grid_values = parse_grid(grid or [])
    tune_config = TuneConfig(
        base=RunConfig.from_dict({**values, "out": None, "name": None}),
        trials=trials if trials is not None else (grid_size(grid_values) if grid_values else 20),
        timeout=timeout,
        out=str(out) if out else "",
        storage=storage,
        study=study,
        space=SearchSpace.from_dict(load_yaml(space)) if space else SearchSpace(),
        grid=grid_values,
        prune=prune,
        keep_checkpoints=keep_checkpoints,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's SIGTERM ends the trial like Ctrl-C
    import optuna  # its log lines repeat ours, and it logs an interrupted or failed trial with a traceback

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    on_trial = None if quiet else _print_trial
    if not quiet:
        err_console.print(
            f"study [bold]{tune_config.study_name}[/] in {tune_config.out_dir}: {tune_config.trials} trials"
            f"{' (grid)' if grid_values else ''}"
        )
    with says_stopped():
        try:
            result = tune(tune_config, on_trial=on_trial)
        except KeyboardInterrupt as exc:  # not a trial's own "train --resume" advice: the study resumes as a whole
            message = "stopped; run the same command again to resume: the interrupted trial runs again"
            raise Interrupted(message) from exc
    _print_result(result)


SHARED = ("epochs", "batch_size", "sample", "valid_pct", "workers", "seed", "log", "mlflow_uri", "mlflow_experiment")
with_run_options(tune_command, SHARED)


def _print_trial(row: dict[str, Any]) -> None:
    value = "-" if row["value"] is None else f"{row['value']:.4f}"
    params = ", ".join(f"{k}={_fmt(row[k])}" for k in _PARAM_COLUMNS if row.get(k) is not None)
    seconds = "" if row.get("elapsed_s") is None else f"  {row['elapsed_s']:.0f} s"
    err_console.print(f"trial {row['number']:>3} {row['state']:<8} {value}  {params}{seconds}", highlight=False)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _cell(value: Any) -> str:
    return "" if value is None else _fmt(value)


_PARAM_COLUMNS = ("method", "backbone", "image_size", "lr", "freeze_epochs", "label_smoothing", "augment", "rotation")


# the trial table's headers, shorter than the parameter names where those are long
_HEADERS = {"image_size": "size", "freeze_epochs": "freeze", "label_smoothing": "smoothing"}
# what a narrow terminal loses first (by header); #, state, value and the method stay
_OPTIONAL = ("rotation", "smoothing", "freeze", "augment", "s/epoch", "backbone", "lr", "size")


def _print_result(result: Any) -> None:
    varied = [c for c in _PARAM_COLUMNS if len({_cell(r.get(c)) for r in result.rows}) > 1]
    fixed = [c for c in _PARAM_COLUMNS if c not in varied and result.rows and result.rows[0].get(c) is not None]
    by_header = {_HEADERS.get(c, c): c for c in varied}
    headers = ["#", "state", "value", *by_header, "s/epoch"]
    table, dropped = fit_table(
        lambda kept: _trials_table(result, kept, by_header), headers, optional=_OPTIONAL, target=console
    )
    console.print(table)
    if fixed:
        console.print("the same in every trial: " + ", ".join(f"{c}={_cell(result.rows[0][c])}" for c in fixed))
    if dropped:
        console.print(f"[dim]left out to fit the terminal: {', '.join(dropped)} (every column is in trials.csv)[/]")
    if result.best:
        from visiontune.experiments.noise import within_noise_of_best

        console.print(f"best: trial {result.best['number']}, {result.monitor} {result.best['value']:.4f}")
        if within_noise_of_best(result.rows, result.best, result.monitor):
            console.print("~ : within noise of the best (inside its 95% interval on these validation images)")
    for name, path in result.files.items():
        console.print(f"{name}: [bold]{path}[/]")
    if "best_config" in result.files:
        console.print(f"retrain it: visiontune train --config {result.files['best_config']}")


def _trials_table(result: Any, headers: list[str], by_header: dict[str, str]) -> Table:
    table = Table(
        title=f"Trials of {result.study_name} ({result.monitor}, validation)", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for header in headers:
        table.add_column(header, justify="left" if header in ("state", "method", "backbone", "augment") else "right")
    from visiontune.experiments.noise import within_noise_of_best

    best = result.best["number"] if result.best else None
    noise = within_noise_of_best(result.rows, result.best, result.monitor)
    for row in result.rows:
        cells = {
            "#": f"[bold]{row['number']}[/]" if row["number"] == best else str(row["number"]),
            "state": row["state"],
            "value": "-" if row["value"] is None else f"{row['value']:.4f}" + (" ~" if row["number"] in noise else ""),
            "s/epoch": "-" if row.get("epoch_s") is None else f"{row['epoch_s']:.1f}",
            **{header: _cell(row.get(name)) for header, name in by_header.items()},
        }
        table.add_row(*(cells[h] for h in headers))
    return table
