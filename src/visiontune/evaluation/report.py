"""report.html: one self-contained page with an evaluation's numbers, figures and the run behind it.

Self-contained: every figure is a base64 `data:` URI and the CSS is inline, so the file can be
mailed, attached to a ticket or opened offline. Every number shown from metrics.json carries
`data-key` (its JSON path) and `data-value` (the exact value), so a test can check each one.
"""

from __future__ import annotations

import base64
import csv
import functools
import html
import json
import operator
from datetime import datetime
from pathlib import Path
from typing import Any

from visiontune.bundle import BundleMeta
from visiontune.evaluation.run_info import audit_html, config_text, heads_html, history_figure
from visiontune.io import atomic_write_text
from visiontune.runs.folder import RunFolder
from visiontune.version import __version__

MISCLASSIFIED_SHOWN = 25
CONFUSED_SHOWN = 12
RELIABILITY_CAPTION = (
    "A calibrated model follows the diagonal: of the answers given with 0.8 confidence, 80% are right."
)

CSS = """
:root { --ink:#1f2937; --muted:#6b7280; --line:#e5e7eb; --soft:#f8fafc; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:#f3f4f6; }
header { background:#111827; color:#f9fafb; padding:28px 40px 22px; }
header h1 { margin:0 0 6px; font-size:26px; font-weight:650; letter-spacing:-0.01em; }
header p { margin:0; color:#d1d5db; font-size:14px; }
header code { color:#f9fafb; background:#374151; }
nav { position:sticky; top:0; z-index:1; background:#fff; border-bottom:1px solid var(--line); padding:8px 40px; }
nav a { color:var(--muted); text-decoration:none; margin-right:18px; font-size:13px; font-weight:600; }
nav a:hover { color:var(--accent); }
main { max-width:1180px; margin:0 auto; padding:24px 40px 60px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:22px 26px; margin:0 0 22px; }
h2 { margin:0 0 14px; font-size:19px; font-weight:650; }
h3 { margin:18px 0 8px; font-size:15px; font-weight:650; }
p.note { color:var(--muted); font-size:13.5px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(160px,1fr)); gap:12px; margin-bottom:14px; }
.card { background:var(--soft); border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; font-weight:600; }
.card .value { font-size:24px; font-weight:650; margin-top:2px; font-variant-numeric:tabular-nums; }
.card.primary { background:#eff6ff; border-color:#bfdbfe; }
table { border-collapse:collapse; width:100%; font-size:13.5px; font-variant-numeric:tabular-nums; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:var(--soft); font-weight:650; color:#374151; }
td.n, th.n { text-align:right; }
tr.total td { font-weight:650; background:var(--soft); }
td.path { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; word-break:break-all; }
.bar { position:relative; }
.bar span.fill { position:absolute; left:0; top:4px; bottom:4px; background:#dbeafe; border-radius:3px; z-index:0; }
.bar span.num { position:relative; z-index:1; }
figure { margin:8px 0 4px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; background:#fff; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:22px; align-items:start; }
@media (max-width: 900px) { .grid2 { grid-template-columns:1fr; } }
pre { background:#0f172a; color:#e2e8f0; padding:14px 16px; border-radius:8px; overflow:auto;
      font-size:12.5px; line-height:1.45; }
code { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12.5px; background:#f1f5f9;
       padding:1px 4px; border-radius:4px; }
ul.notes { margin:0; padding-left:20px; color:var(--muted); font-size:13.5px; }
pre.config { column-count:3; column-gap:28px; column-rule:1px solid #334155; }
@media (max-width: 900px) { pre.config { column-count:1; } }
footer { text-align:center; color:var(--muted); font-size:12px; padding-bottom:30px; }
"""


def write_report(
    out_dir: Path, metrics: dict[str, Any], *, run: RunFolder | None, meta: BundleMeta, notes: list[str]
) -> Path:
    """Render report.html from metrics.json's content and the PNGs already in `out_dir`."""
    sections = [
        _summary(metrics, notes),
        _per_class(metrics),
        _confusion(metrics, out_dir),
        _mistakes(metrics, out_dir),
        _calibration(metrics, out_dir),
        _ood(metrics, out_dir) if metrics.get("ood") else "",
        _misclassified(metrics, out_dir),
        _training(run, meta, out_dir),
    ]
    page = _page(metrics, meta, "\n".join(s for s in sections if s))
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path


# ---- page -------------------------------------------------------------------------------------
def _page(metrics: dict[str, Any], meta: BundleMeta, body: str) -> str:
    name = meta.architecture
    head = meta.metrics.get("head")
    title = f"{name} + {head} head" if head else name
    method = meta.training.get("method", "?")
    links = [
        ("summary", "Summary"),
        ("classes", "Per class"),
        ("confusion", "Confusion"),
        ("mistakes", "Top losses"),
        ("calibration", "Calibration"),
        ("ood", "OOD"),
        ("misclassified", "Misclassified"),
        ("training", "Training"),
    ]
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in links if a != "ood" or metrics.get("ood"))
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Evaluation: {_e(title)}</title><style>{CSS}</style></head>
<body>
<header><h1>Evaluation: {_e(title)}</h1>
<p>{_e(method)} bundle <code>{_e(metrics["model"])}</code> on <code>{_e(metrics["data"])}</code>
({_e(_split_words(metrics))}, {metrics["images"]} images) &middot; {len(meta.classes)} classes
&middot; {when}</p></header>
<nav>{nav}</nav>
<main>
{body}
</main>
<footer>visiontune {__version__} &middot; numbers from metrics.json in the same folder</footer>
</body></html>
"""


def _split_words(metrics: dict[str, Any]) -> str:
    split = metrics["split"]
    where = "the run's" if metrics.get("own_data") else "its"
    return "every image" if split == "all" else f"{where} {split} split"


# ---- sections ---------------------------------------------------------------------------------
def _summary(metrics: dict[str, Any], notes: list[str]) -> str:
    cards = [("Accuracy", "accuracy", "pct", True), ("Balanced accuracy", "balanced_accuracy", "pct", True),
             ("Error rate", "error_rate", "pct", False)]  # fmt: skip
    cards += [
        (f"Top-{k} accuracy", f"top_{k}_accuracy", "pct", False) for k in (3, 5) if f"top_{k}_accuracy" in metrics
    ]
    cards += [("Log loss", "log_loss", "num", False), ("ECE (raw)", "ece_before", "num", False),
              ("ECE (scaled)", "ece_after", "num", False), ("Images", "images", "int", False)]  # fmt: skip
    html_cards = "".join(
        f'<div class="card{" primary" if primary else ""}"><div class="label">{label}</div>'
        f'<div class="value">{_num(metrics, [key], fmt)}</div></div>'
        for label, key, fmt, primary in cards
    )
    lines = [*notes]
    if metrics.get("undecodable"):
        lines.append(f"{metrics['undecodable']} selected files could not be decoded and were left out")
    lines.append(_unknown_line(metrics.get("unknown") or {}))
    lines += [interval_line(metrics.get("intervals") or {}), set_line(metrics.get("prediction_sets") or {})]
    items = "".join(f"<li>{_e(line[:1].upper() + line[1:])}</li>" for line in lines if line)
    return (
        f'<section id="summary"><h2>Summary</h2><div class="cards">{html_cards}</div>'
        f'<ul class="notes">{items}</ul></section>'
    )


def _unknown_line(unknown: dict[str, Any]) -> str:
    if unknown.get("threshold") is None:
        return f"Unknown detection: {unknown.get('note', 'no threshold stored in the bundle')}."
    return (
        f"At the bundle's unknown threshold ({unknown['score']} score below {unknown['threshold']:.4g}), "
        f'{_pct(unknown["flagged"])} of these images would be answered "unknown"; '
        f"accuracy on the rest: {_pct(unknown['accuracy_answered'])}."
    )


def interval_line(intervals: dict[str, Any]) -> str:
    """The 95% intervals of accuracy and balanced accuracy, in words."""
    if not intervals:
        return ""
    (a_low, a_high), (b_low, b_high) = intervals["accuracy"], intervals["balanced_accuracy"]
    return (
        f"95% intervals: accuracy {_pct(a_low)} to {_pct(a_high)} (Wilson), balanced accuracy {_pct(b_low)} to "
        f"{_pct(b_high)} (bootstrap over images): a difference smaller than these is noise on this many images."
    )


def set_line(sets: dict[str, Any]) -> str:
    """How the conformal prediction sets covered these images."""
    if "coverage" not in sets:
        return f"Prediction sets: {sets['note']}." if sets.get("note") else ""
    low, high = sets["interval"]
    kind = "per class (Mondrian)" if sets["mondrian"] else "over all classes"
    return (
        f"Prediction sets (target {_pct(sets['target'])} coverage, {kind}): the true class was in the set for "
        f"{_pct(sets['coverage'])} of these images (95% interval {_pct(low)} to {_pct(high)}); mean set size "
        f"{sets['mean_size']:.2f}, {_pct(sets['single'])} single-label."
    )


def _per_class(metrics: dict[str, Any]) -> str:
    head = "<tr><th>class</th>" + "".join(f'<th class="n">{c}</th>' for c in ("precision", "recall", "F1", "support"))
    recall = (metrics.get("intervals") or {}).get("recall") or {}
    if recall:
        head += '<th class="n">recall, 95% interval</th>'
    rows = [_class_row(name, ["per_class", name], metrics, interval=recall.get(name)) for name in metrics["per_class"]]
    rows += [
        _class_row(label, [key], metrics, total=True)
        for label, key in (("macro average", "macro_avg"), ("weighted average", "weighted_avg"))
    ]
    return (
        '<section id="classes"><h2>Per class</h2><p class="note">scikit-learn\'s classification report; '
        "recall is the share of each class found, precision the share of its predictions that were right.</p>"
        f"<table>{head}{''.join(rows)}</table></section>"
    )


def _class_row(
    label: str, path: list[str], metrics: dict[str, Any], *, total: bool = False, interval: list | None = None
) -> str:
    cells = "".join(_bar_cell(metrics, [*path, k]) for k in ("precision", "recall", "f1"))
    support = f'<td class="n">{_num(metrics, [*path, "support"], "int")}</td>'
    if interval is not None:
        support += f'<td class="n">{_pct(interval[0])} to {_pct(interval[1])}</td>'
    return f"<tr{' class=total' if total else ''}><td>{_e(label)}</td>{cells}{support}</tr>"


def _bar_cell(metrics: dict[str, Any], path: list[str]) -> str:
    value = _lookup(metrics, path) or 0.0
    fill = f'<span class="fill" style="width:{100 * value:.1f}%"></span>'
    return f'<td class="n bar">{fill}{_num(metrics, path, "pct")}</td>'


def _confusion(metrics: dict[str, Any], out_dir: Path) -> str:
    pairs = metrics["most_confused"][:CONFUSED_SHOWN]
    if pairs:
        rows = "".join(
            f"<tr><td>{_e(p['actual'])}</td><td>{_e(p['predicted'])}</td>"
            f'<td class="n">{_num(metrics, ["most_confused", i, "count"], "int")}</td></tr>'
            for i, p in enumerate(pairs)
        )
        table = f'<table><tr><th>actual</th><th>predicted as</th><th class="n">images</th></tr>{rows}</table>'
    else:
        table = '<p class="note">No confusions: every image was classified correctly.</p>'
    return (
        '<section id="confusion"><h2>Confusion matrix</h2>'
        + _figure(
            out_dir / "confusion_matrix.png", "Rows: actual class; columns: predicted. Right: each row as shares."
        )
        + f"<h3>Most confused pairs</h3>{table}</section>"
    )


def _mistakes(metrics: dict[str, Any], out_dir: Path) -> str:
    top = metrics.get("top_losses") or {}
    if not top.get("images"):
        return ""
    cam = top["gradcam"]
    if cam["applies"]:
        cam_html = _figure(
            out_dir / "gradcam.png",
            "Grad-CAM on the same images: warm colours are where the evidence for the predicted class was.",
        )
    else:
        cam_html = f'<p class="note">{_e(cam["reason"])}</p>'
    caption = "Highest loss first. Each title: predicted class (its probability), actual class, loss."
    return (
        '<section id="mistakes"><h2>Top losses</h2>'
        f"{_figure(out_dir / 'top_losses.png', caption)}"
        f"<h3>Where the model looked (Grad-CAM)</h3>{cam_html}</section>"
    )


def _calibration(metrics: dict[str, Any], out_dir: Path) -> str:
    rows = [
        ("temperature", ["temperature"], "num"),
        ("ECE, raw model", ["ece_before"], "num"),
        ("ECE, temperature-scaled", ["ece_after"], "num"),
        ("log loss, raw model", ["log_loss"], "num"),
        ("log loss, temperature-scaled", ["log_loss_calibrated"], "num"),
    ]
    table = "".join(
        f'<tr><td>{label}</td><td class="n">{_num(metrics, key, fmt)}</td></tr>' for label, key, fmt in rows
    )
    note = (
        "The temperature was fitted on the validation split at the end of training."
        if metrics.get("calibration_fitted")
        else "This bundle predates calibration: its temperature is 1, so both rows are the raw model's."
    )
    return (
        '<section id="calibration"><h2>Calibration</h2><div class="grid2">'
        f"<div>{_figure(out_dir / 'reliability.png', RELIABILITY_CAPTION)}</div>"
        f'<div><table>{table}</table><p class="note">Expected calibration error (15 equal-width bins): '
        f"the gap between confidence and accuracy, weighted by images. {note}</p></div></div></section>"
    )


def _ood(metrics: dict[str, Any], out_dir: Path) -> str:
    ood = metrics["ood"]
    rows = [("OOD images", ["ood", "images"], "int"), (f"AUROC ({ood['score']} score)", ["ood", "auroc"], "num")]
    rows += [
        (f"AUROC ({name} score)", ["ood", "auroc_by_score", name], "num")
        for name in ood["auroc_by_score"]
        if name != ood["score"]
    ]
    if ood["threshold"] is not None:
        rows += [
            ("OOD images flagged unknown", ["ood", "flagged_ood"], "pct"),
            ("evaluation images flagged unknown", ["ood", "flagged_in"], "pct"),
        ]
        note = f"Flagged: {ood['score']} score below the bundle's threshold {ood['threshold']:.4g}."
    else:
        note = "The bundle stores no unknown threshold, so no image is flagged; the AUROC needs none."
    table = "".join(
        f'<tr><td>{_e(label)}</td><td class="n">{_num(metrics, key, fmt)}</td></tr>' for label, key, fmt in rows
    )
    return (
        '<section id="ood"><h2>Out-of-distribution images</h2><div class="grid2">'
        f'<div><table>{table}</table><p class="note">Images from <code>{_e(ood["folder"])}</code>, '
        "of none of the classes. "
        f"AUROC 1.0: every OOD image scores below every evaluation image; 0.5: chance. {note}</p></div>"
        f"<div>{_figure(out_dir / 'ood_scores.png', 'The unknown score on evaluation and OOD images.')}</div>"
        "</div></section>"
    )


def _misclassified(metrics: dict[str, Any], out_dir: Path) -> str:
    with open(out_dir / "misclassified.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return '<section id="misclassified"><h2>Misclassified</h2><p class="note">None.</p></section>'
    body = "".join(
        f'<tr><td class="path">{_e(r["path"])}</td><td>{_e(r["actual"])}</td><td>{_e(r["predicted"])}</td>'
        f'<td class="n">{float(r["probability"]):.3f}</td></tr>'
        for r in rows[:MISCLASSIFIED_SHOWN]
    )
    more = f" (the {MISCLASSIFIED_SHOWN} most confident shown)" if len(rows) > MISCLASSIFIED_SHOWN else ""
    return (
        f'<section id="misclassified"><h2>Misclassified: {len(rows)} image{"s" if len(rows) != 1 else ""}</h2>'
        f'<p class="note">All of them in <code>misclassified.csv</code>{more}, most confident mistakes first.</p>'
        '<table><tr><th>path</th><th>actual</th><th>predicted</th><th class="n">probability</th></tr>'
        f"{body}</table></section>"
    )


def _training(run: RunFolder | None, meta: BundleMeta, out_dir: Path) -> str:
    parts = ['<section id="training"><h2>Training</h2>']
    if run is None:
        parts.append(
            '<p class="note">The bundle is not inside its run folder: '
            "learning curves and data audit are not available.</p>"
        )
    else:
        parts.append(f'<p class="note">Run folder <code>{_e(str(run.path))}</code>.</p>')
        history = history_figure(run, out_dir)
        if history is not None:
            parts.append(
                "<h3>Learning curves</h3>" + _figure(history, "Per epoch; dotted line: the backbone was unfrozen.")
            )
        parts.append(heads_html(run))
        parts.append(audit_html(run))
    parts.append(
        f'<h3>Configuration (config.yaml)</h3><pre class="config">{_e(config_text(run, meta))}</pre></section>'
    )
    return "".join(parts)


# ---- helpers ----------------------------------------------------------------------------------
def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    image = f'<img alt="{_e(path.stem)}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{_e(caption)}</figcaption></figure>"


def _lookup(metrics: dict[str, Any], path: list[Any]) -> Any:
    return functools.reduce(operator.getitem, path, metrics)


def _num(metrics: dict[str, Any], path: list[Any], fmt: str) -> str:
    """A number from metrics.json, tagged with where it came from (for the browser test and the curious)."""
    value = _lookup(metrics, path)
    shown = (
        "n/a" if value is None else _pct(value) if fmt == "pct" else f"{value:d}" if fmt == "int" else f"{value:.4f}"
    )
    return (
        f'<span class="num" data-key=\'{_e(json.dumps(path))}\' data-format="{fmt}" '
        f'data-value="{_e(json.dumps(value))}">{shown}</span>'
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
