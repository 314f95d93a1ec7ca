"""`visiontune runs compare A B ...`: learning curves on one chart, and what the configs changed.

The seeds' loop is "change one thing, train, compare": the chart answers "which learned better
and faster", the differences answer "what did I change" without diffing YAML by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiontune.errors import ConfigError
from visiontune.evaluation.answers import paired_test, read_answers
from visiontune.experiments.charts import plot_learning_curves
from visiontune.runs.folder import RunFolder
from visiontune.runs.summary import RunSummary, read_run

IGNORED_KEYS = ("out", "name")  # where a run was written is not a difference in what it did


@dataclass
class Comparison:
    """The runs compared, their differing settings (dotted key -> one value per run) and the chart."""

    runs: list[RunSummary]
    differences: dict[str, list[Any]]
    chart: Path
    paired: list[dict[str, Any] | None] = field(default_factory=list)  # McNemar: the first run vs each other


def compare_runs(paths: list[str | Path], *, out: str | Path = "compare.png") -> Comparison:
    """Plot the runs' validation curves into `out` and list the settings that differ.

    Example:
        >>> c = compare_runs(["runs/a", "runs/b"], out="ab.png")  # doctest: +SKIP
        >>> c.differences  # doctest: +SKIP
        {'model.image_size': [32, 64]}
    """
    if len(paths) < 2:
        raise ConfigError(f"runs compare needs two or more run folders. Received: {len(paths)}")
    folders = [RunFolder(p) for p in paths]
    for folder in folders:
        if not folder.file("config.yaml").is_file():
            raise ConfigError(f"{folder.path}: not a run folder (no config.yaml); `visiontune runs DIR` lists them")
    runs = [read_run(f.path, root=f.path.parent) for f in folders]
    configs = [_flatten(f.config().to_dict()) for f in folders]  # older layouts read as this release's
    curves = [(_label(run, runs), RunFolder(run.path).epochs(), run) for run in runs]
    plot_learning_curves(curves, Path(out))
    answers = [read_answers(f.eval_dir) for f in folders]  # from `visiontune evaluate RUN DATA`
    paired = [paired_test(answers[0], other) for other in answers[1:]]
    return Comparison(runs, config_differences(configs), Path(out), paired)


def config_differences(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The flattened keys whose values are not the same in every config (missing counts as None)."""
    keys = sorted({k for c in configs for k in c if k.split(".")[0] not in IGNORED_KEYS})
    return {k: [c.get(k) for c in configs] for k in keys if len({repr(c.get(k)) for c in configs}) > 1}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _label(run: RunSummary, runs: list[RunSummary]) -> str:
    """The folder name, or its path when two compared runs share a name (trial-0003 of two studies)."""
    same = sum(r.path.name == run.path.name for r in runs) > 1
    return str(run.path) if same else run.path.name
