"""What the run folder recorded, as report.html fragments: learning curves, heads compared, data audit, config.

Each piece is optional: a features run has no epochs (it has heads.csv instead), and an older or
copied run may lack a file; the report then says so rather than failing.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import yaml

from visiontune.bundle import BundleMeta
from visiontune.plots import plot_history
from visiontune.runs.folder import CONFIG, HISTORY, RunFolder

AUDIT_FACTS = (
    ("method", "method"),
    ("data_root", "data folder"),
    ("imbalance_ratio", "imbalance (largest class / smallest, train)"),
    ("monitor", "metric monitored"),
    ("balance", "class balancing"),
    ("precision", "precision"),
    ("data_manifest_sha256", "data manifest (sha256)"),
)


def history_figure(run: RunFolder, out_dir: Path) -> Path | None:
    """The run's history.png; re-plotted from metrics.csv into `out_dir` when only the numbers are left."""
    if run.file(HISTORY).is_file():
        return run.file(HISTORY)
    rows = run.epochs()
    if not rows:
        return None
    plot_history(rows, out_dir / HISTORY)
    return out_dir / HISTORY


def heads_html(run: RunFolder) -> str:
    """heads.csv of a features run: each classical head's validation scores, the kept one marked."""
    rows = run.heads()
    if not rows:
        return ""
    columns = [
        c for c in ("head", "valid_accuracy", "valid_balanced_accuracy", "valid_macro_f1", "fit_s") if c in rows[0]
    ]
    head = "".join(f"<th{'' if c == 'head' else ' class=n'}>{_e(c.replace('_', ' '))}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(_cell(c, r.get(c, "")) for c in columns)
        + f"<td>{'kept' if r.get('best') == 'True' else ''}</td></tr>"
        for r in rows
    )
    return f"<h3>Heads compared (validation split)</h3><table><tr>{head}<th></th></tr>{body}</table>"


def audit_html(run: RunFolder) -> str:
    """run.json's data audit: images per class and split, imbalance and how training handled it."""
    info = run.info()
    if not info:
        return '<p class="note">No run.json: the data audit is not available.</p>'
    parts = ["<h3>Data audit (recorded at training)</h3>", _counts_table(info.get("counts") or {})]
    facts = [(label, info[key]) for key, label in AUDIT_FACTS if info.get(key) is not None]
    if info.get("class_weights"):
        facts.append(("class weights in the loss", ", ".join(f"{w:.2f}" for w in info["class_weights"])))
    if info.get("features"):
        feats = info["features"]
        facts.append(
            (
                "feature vectors",
                f"{feats.get('dim')} wide; {feats.get('extracted')} extracted, {feats.get('reused')} from cache",
            )
        )
    rows = "".join(f"<tr><td>{_e(label)}</td><td>{_e(_fact(value))}</td></tr>" for label, value in facts)
    parts.append(f'<table style="margin-top:12px">{rows}</table>')
    return "".join(parts)


def config_text(run: RunFolder | None, meta: BundleMeta) -> str:
    """config.yaml as the run saved it; the bundle's copy of the config when the run folder is gone."""
    if run is not None and run.file(CONFIG).is_file():
        return run.file(CONFIG).read_text()
    config = meta.training.get("config")
    return yaml.safe_dump(config, sort_keys=False) if config else "(the bundle records no training config)"


def _counts_table(counts: dict[str, dict[str, int]]) -> str:
    if not counts:
        return '<p class="note">No image counts recorded.</p>'
    splits = list(counts)
    classes = list(dict.fromkeys(c for per_class in counts.values() for c in per_class))
    head = (
        "<tr><th>class</th>" + "".join(f'<th class="n">{_e(s)}</th>' for s in splits) + '<th class="n">total</th></tr>'
    )
    body = "".join(
        f"<tr><td>{_e(c)}</td>"
        + "".join(f'<td class="n">{counts[s].get(c, 0)}</td>' for s in splits)
        + f'<td class="n">{sum(counts[s].get(c, 0) for s in splits)}</td></tr>'
        for c in classes
    )
    totals = [sum(counts[s].values()) for s in splits]
    body += (
        '<tr class="total"><td>all</td>'
        + "".join(f'<td class="n">{t}</td>' for t in totals)
        + f'<td class="n">{sum(totals)}</td></tr>'
    )
    return f"<table>{head}{body}</table>"


def _cell(column: str, value: str) -> str:
    if column == "head":
        return f"<td>{_e(value)}</td>"
    try:
        number = float(value)
    except ValueError:
        return f'<td class="n">{_e(value)}</td>'
    shown = f"{number:.2f} s" if column == "fit_s" else f"{100 * number:.2f}%"
    return f'<td class="n">{shown}</td>'


def _fact(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
