"""What `clean` writes: issues.csv, clean.json, and two grids of suspects to look at.

- issues.csv: one row per (image, kind of issue), ranked as the review page shows them: path
  (relative to the data root), given label, suggested label, issue kind, score, the model's top-3;
- clean.json: the per-class table, overlapping classes, the health score, counts, timings;
- suspects.png: for each class, its most likely label errors (given label = the row's class);
- top_suspects.png: the TOP_N most likely label errors overall, numbered as in issues.csv.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from visiontune.cleaning.ranking import Issue
from visiontune.data.images import open_image
from visiontune.errors import ImageError
from visiontune.io import atomic_path, atomic_write_json, atomic_write_text

TOP_N = 20
PER_CLASS = 8
CELL = 112  # thumbnail pixels
CAPTION = 46  # pixels of text under each thumbnail (three lines)
HEADER = 22
PAD = 6
COLUMNS = ("rank", "path", "given", "suggested", "kind", "score", "top1", "p1", "top2", "p2", "top3", "p3")


def write_outputs(result: Any, out_dir: Path) -> dict[str, str]:
    """issues.csv, clean.json, suspects.png and top_suspects.png in `out_dir`; returns {name: path}."""
    files = {
        "issues": out_dir / "issues.csv",
        "summary": out_dir / "clean.json",
        "suspects": out_dir / "suspects.png",
        "top_suspects": out_dir / "top_suspects.png",
    }
    atomic_write_text(files["issues"], issues_csv(result.issues, result.relative))
    atomic_write_json(files["summary"], summary(result))
    errors = [i for i in result.issues if i.kind == "label_error"]
    per_class = [(f"given {c}", [i for i in errors if i.given == c][:PER_CLASS]) for c in result.classes]
    save_sheet(per_class, files["suspects"], columns=PER_CLASS, title="most likely label errors, per given class")
    top = errors[:TOP_N]
    chunks = [(f"#{k + 1}-{min(k + 5, len(top))}", top[k : k + 5]) for k in range(0, len(top), 5)]
    save_sheet(chunks, files["top_suspects"], columns=5, title=f"top {len(top)} suspected label errors")
    return {name: str(path) for name, path in files.items()}


def issues_csv(issues: Sequence[Issue], relative: Any) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rank, issue in enumerate(issues, start=1):
        top = [x for label, p in issue.top for x in (label, f"{p:.4f}")]
        top += [""] * (6 - len(top))
        writer.writerow(
            [rank, relative(issue.path), issue.given, issue.suggested, issue.kind, f"{issue.score:.4f}", *top]
        )
    return buffer.getvalue()


def summary(result: Any) -> dict[str, Any]:
    """clean.json: everything the terminal summary shows, and how it was computed."""
    return {
        "data_root": str(result.data.root),
        "images": len(result.data.samples),
        "classes": result.health.classes,
        "overlapping_classes": result.health.overlaps,
        "label_health_score": result.health.score,
        "estimated_label_errors": result.health.estimated_errors,
        "issues": result.kind_counts(),
        "model": result.model,
        "folds": result.folds,
        "extraction": result.extraction,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "corrections": result.data.corrections.to_dict() if result.data.corrections else None,
    }


def save_sheet(rows: list[tuple[str, list[Issue]]], path: Path, *, columns: int, title: str) -> None:
    """A white sheet: per row a header band, then thumbnails captioned with name, given -> suggested, score."""
    font = ImageFont.load_default(size=11)
    row_height = HEADER + CELL + CAPTION + PAD
    width = max(columns * (CELL + PAD) + PAD, 320)
    sheet = Image.new("RGB", (width, HEADER + max(len(rows), 1) * row_height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, 4), title if rows else f"{title}: none", fill="black", font=ImageFont.load_default(size=14))
    for r, (header, issues) in enumerate(rows):
        top = HEADER + r * row_height
        draw.text((PAD, top + 5), header + ("" if issues else ": none"), fill="black", font=font)
        for c, issue in enumerate(issues):
            left = PAD + c * (CELL + PAD)
            thumb = _thumbnail(issue.path)
            sheet.paste(thumb, (left + (CELL - thumb.width) // 2, top + HEADER + (CELL - thumb.height) // 2))
            lines = [
                issue.path.name,
                f"{issue.given[:9]} -> {issue.suggested[:9]}",
                f"{issue.kind[:12]} {issue.score:.2f}",
            ]
            for k, line in enumerate(lines):
                draw.text(
                    (left, top + HEADER + CELL + 2 + 14 * k), line, fill="darkred" if k == 1 else "black", font=font
                )
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def _thumbnail(path: Path) -> Image.Image:
    """The image fitted into CELL px (small images scaled up with nearest neighbours, so pixels stay honest)."""
    try:
        image = open_image(path, draft_size=(2 * CELL, 2 * CELL))
    except ImageError:
        return Image.new("RGB", (CELL, CELL), "lightgrey")
    method = Image.Resampling.NEAREST if max(image.size) <= CELL else Image.Resampling.LANCZOS
    return ImageOps.contain(image, (CELL, CELL), method=method)
