"""`inspect_data`: what is in a data set and what is wrong with it, before any training.

One pass of `load_data` reads every file once (hash, header, decode check, pHash); everything
here is computed from those facts: counts and imbalance, image sizes and a suggested
`image_size`, unreadable and skipped files, and duplicates within a class, across classes
(conflicting labels) and across splits (leakage), symbolic links that loop, leave the data folder
or reach a file twice, and repeated or contradicting CSV rows. Only fatal problems make the data
unusable: what `load_data` would refuse to train on (fewer than two classes, a class missing from a
split, a file a CSV lists under two labels). Everything else is a warning: duplicate images under
two classes are separate files that train can use, so they stay warnings, like links that reach one
file from two class folders (they show up as exact duplicates with conflicting labels).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from visiontune.config import DataConfig
from visiontune.data import duplicates
from visiontune.data.dataset import LabelledImages, load_data
from visiontune.data.fileinfo import FileInfo
from visiontune.data.images import open_image
from visiontune.data.sources import Sample, relative_posix
from visiontune.errors import DatasetError, ImageError
from visiontune.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

SCOPES = ("conflicting_labels", "cross_split", "within_class")  # most serious first
IMBALANCE_WARN = 3.0  # largest / smallest class above this is worth a warning (and a weighted loss)
GRID_CELL = 96  # pixels per thumbnail in the sample grids
GRID_MAX_CLASSES = 50  # a grid of a 1000-class data set would be unreadable; show the first 50
REPORT_FILE = "inspect.json"


@dataclass
class AuditReport:
    """Everything `visiontune inspect` prints and writes to inspect.json.

    Paths are strings relative to `root` where possible. Each duplicate group is
    `{"kind": "exact"|"near", "scope": ..., "scopes": [...], "labels": [...], "splits": [...], "files": [...]}`:
    `scopes` lists every scope that applies (a copy in another class *and* another split is both
    conflicting_labels and cross_split) and `scope` is the most serious of them, in the order
    conflicting_labels > cross_split > within_class. `files` holds `{"path", "label", "split"}`.
    `unsupported` lists every file the source passed over with its reason: unsupported extensions, and
    files outside class or split folders. `total_bytes` counts every image file read, usable or not.
    `links` lists symbolic links that were not simply followed, as `{"path", "target", "kind", "note"}` with kind
    loop (not entered), outside_root (followed) or repeat (reaches a file or folder already listed; listed once).
    `repeated_rows` lists CSV rows naming a file already listed with the same label (`{"path", "reason"}`, used
    once); `label_conflicts` lists files a CSV gives two labels (`{"path", "labels", "lines"}`), left out and a
    problem, since `load_data` refuses them.
    `problems` make the data unusable (`ok` is False); `warnings` are worth reading but not fatal.
    """

    root: str
    source_kind: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    class_totals: dict[str, int]
    imbalance_ratio: float
    num_images: int
    num_files: int
    total_bytes: int
    sizes: dict[str, dict[str, float]]
    modes: dict[str, int]
    formats: dict[str, int]
    suggested_image_size: int
    suggested_image_size_reason: str
    unreadable: list[dict[str, str]] = field(default_factory=list)
    unsupported: list[dict[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)
    repeated_rows: list[dict[str, str]] = field(default_factory=list)
    label_conflicts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    grids: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    images_per_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing fatal was found: the data can be trained on as it is."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-able report (all values are already plain), with `ok` added."""
        return {**dataclasses.asdict(self), "ok": self.ok}


def inspect_data(
    source: str | Path,
    config: DataConfig | None = None,
    *,
    out_dir: Path | None = None,
    grid_per_class: int = 4,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> AuditReport:
    """Audit a data set; with `out_dir`, also write inspect.json and samples_<split>.png there.

    A source that holds no images at all raises DatasetError; anything found in the images
    (one class, a class missing from a split, leakage...) is reported instead. `config.sample` is
    ignored: an audit of a 10% sample would miss most duplicates, and every file is read anyway.

    Example:
        >>> report = inspect_data("photos", out_dir=Path("runs/inspect"))
        >>> report.ok, report.warnings
    """
    config = dataclasses.replace(config or DataConfig(), sample=1.0)
    start = time.perf_counter()
    data = load_data(source, config, check=False, progress=progress, on_total=on_total)
    report = build_report(data)
    if out_dir is not None:
        report.grids = write_grids(data, Path(out_dir), per_class=grid_per_class, max_pixels=config.max_pixels)
    report.elapsed_s = round(time.perf_counter() - start, 3)
    report.images_per_s = round(report.num_files / max(report.elapsed_s, 1e-9), 1)
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / REPORT_FILE, report.to_dict())
    log.info("inspected %d files in %.1fs (%.0f images/s)", report.num_files, report.elapsed_s, report.images_per_s)
    return report


def build_report(data: LabelledImages) -> AuditReport:
    """The report of a loaded data set, without grids or timing."""
    rel = functools.partial(relative_posix, root=data.root)
    usable = [data.infos[s.path] for s in data.samples]
    totals = Counter(s.label for s in data.samples)
    image_size, reason = suggest_image_size([min(i.width, i.height) for i in usable if i.width and i.height])
    report = AuditReport(
        root=str(data.root),
        source_kind=data.kind,
        classes=list(data.classes),
        counts=data.counts(),
        class_totals={c: totals[c] for c in data.classes},
        imbalance_ratio=_imbalance(totals),
        num_images=len(data.samples),
        num_files=len(data.infos),
        total_bytes=sum(i.size_bytes for i in data.infos.values()),
        sizes=size_stats(usable),
        modes=_tally(i.mode for i in usable),
        formats=_tally(i.format for i in usable),
        suggested_image_size=image_size,
        suggested_image_size_reason=reason,
        unreadable=[{"path": rel(i.path), "reason": i.error or ""} for i in data.unreadable],
        unsupported=[{"path": rel(p), "reason": why} for p, why in data.skipped],
        empty_classes=list(data.empty_classes),
        duplicates=find_duplicates(data, rel),
        links=[{"path": rel(f.path), "target": rel(f.target), "kind": f.kind, "note": f.note} for f in data.links],
        repeated_rows=[{"path": rel(p), "reason": why} for p, why in data.repeated_rows],
        label_conflicts=[
            {"path": rel(c.path), "labels": c.labels, "lines": [line for line, _ in c.rows]}
            for c in data.label_conflicts
        ],
    )
    report.problems = _problems(data)
    report.warnings = _warnings(report)
    return report


def _tally(values: Any) -> dict[str, int]:
    return dict(Counter(str(v) for v in values).most_common())


def _imbalance(totals: Counter[str]) -> float:
    """Largest class / smallest class over all splits; 1.0 for zero or one class."""
    if len(totals) < 2:
        return 1.0
    return round(max(totals.values()) / min(totals.values()), 2)


def size_stats(infos: Sequence[FileInfo]) -> dict[str, dict[str, float]]:
    """min / median / max of width, height, smallest side and aspect ratio (width / height)."""
    dims = np.array([(i.width, i.height) for i in infos if i.width and i.height], dtype=np.float64).reshape(-1, 2)
    if not len(dims):
        return {}
    columns = {
        "width": dims[:, 0],
        "height": dims[:, 1],
        "min_side": dims.min(axis=1),
        "aspect_ratio": dims[:, 0] / dims[:, 1],
    }
    stats = {"min": np.min, "median": np.median, "max": np.max}
    return {name: {stat: round(float(f(values)), 3) for stat, f in stats.items()} for name, values in columns.items()}


def suggest_image_size(min_sides: Sequence[int]) -> tuple[int, str]:
    """An `image_size` for fine-tuning a pretrained backbone, from the median smallest side `m`.

    Rule: small images (m < 112) are upsampled about 3x, to the smallest multiple of 16 >= 3m, at
    least 64 and at most 224: ImageNet backbones learnt features at roughly 224 px, and a 28 px
    image leaves almost nothing after their 32x downsampling. On 28 px Fashion-MNIST (4 epochs,
    bench/RESULTS.md) 96 px reached 0.894 test accuracy on the demo subset against 0.881-0.883 at
    64-80 px, and the 112 px of the former 4x rule added little for a third more compute. Larger
    images use m rounded to a multiple of 32, at least 224 when 2x upsampling would reach it, and
    at most 384 (more costs quadratic compute for little gain). Returns the size and a one-line reason.
    """
    if not min_sides:
        return 224, "no readable images; 224 is the usual pretrained resolution"
    m = float(np.median(min_sides))
    if m < 112:
        size = min(224, max(64, 16 * math.ceil(3 * m / 16)))
        return size, f"median smallest side {m:g} px is small: upsampled about 3x to {size} (multiple of 16)"
    size = min(384, max(224, 32 * round(m / 32)))
    why = "capped at 384" if 32 * round(m / 32) > 384 else "at least 224, the usual pretrained resolution"
    return size, f"median smallest side {m:g} px, rounded to a multiple of 32 ({why})"


def largest_useful_size(min_sides: Sequence[int]) -> int | None:
    """The input size past which small images gain nothing but compute: about 4x their median smallest side.

    A time budget that could buy more pixels stops here for images under 112 px (28 px Fashion-MNIST:
    112 px; the demo's 10-minute budget at 160 px scored no better than at 112, bench/RESULTS.md)
    and buys epochs instead. None for larger images: the backbone's own size is their limit.
    """
    if not min_sides:
        return None
    m = float(np.median(min_sides))
    return 16 * math.ceil(4 * m / 16) if m < 112 else None


def find_duplicates(data: LabelledImages, relative: Callable[[str | Path], str]) -> list[dict[str, Any]]:
    """Exact (same bytes) and near (same pHash neighbourhood, confirmed by thumbnails) groups of usable samples.

    Uses the duplicate links `load_data` found for its split, so no file is compared twice.
    """
    index = {s.path: i for i, s in enumerate(data.samples)}
    found = []
    for kind in ("exact", "near"):
        pairs = [(index[a], index[b]) for a, b in data.duplicate_links.get(kind, []) if a in index and b in index]
        for members in duplicates.duplicate_groups(len(data.samples), pairs):
            found.append(_group(kind, [data.samples[i] for i in members], relative))
    return sorted(found, key=lambda g: (SCOPES.index(g["scope"]), g["kind"], g["files"][0]["path"]))


def _group(kind: str, members: list[Sample], relative: Callable[[str | Path], str]) -> dict[str, Any]:
    labels = sorted({s.label for s in members})
    splits = sorted({str(s.split) for s in members})
    applies = {
        "conflicting_labels": len(labels) > 1,
        "cross_split": len(splits) > 1,
        "within_class": len(labels) == len(splits) == 1,
    }
    scopes = [scope for scope in SCOPES if applies[scope]]
    files = [{"path": relative(s.path), "label": s.label, "split": s.split} for s in members]
    return {"kind": kind, "scope": scopes[0], "scopes": scopes, "labels": labels, "splits": splits, "files": files}


def _problems(data: LabelledImages) -> list[str]:
    """Fatal findings: a file with two labels, no usable image, fewer than two classes, a class missing from a split."""
    problems = []
    try:
        data.check_labels()
    except DatasetError as exc:
        problems.append(str(exc))
    if not data.samples:
        undecodable = f"{data.root}: none of the {len(data.infos)} image files can be decoded; nothing to train on"
        return [*problems, undecodable]
    try:
        data.check_classes()
    except DatasetError as exc:
        problems.append(str(exc))
    return problems


def _warnings(report: AuditReport) -> list[str]:
    """One line per kind of non-fatal finding, in the order a user should fix them."""
    lines = _duplicate_warnings(report.duplicates) + _link_warnings(report.links)
    if report.repeated_rows:
        count = len(report.repeated_rows)
        lines.append(f"CSV rows repeating a file already listed with the same label, each file used once: {count}")
    if report.unreadable:
        lines.append(f"{_n(len(report.unreadable), 'unreadable file')} skipped (truncated, corrupt or not an image)")
    if report.unsupported:
        lines.append(f"{_n(len(report.unsupported), 'file')} skipped (unsupported extension or outside class folders)")
    if report.empty_classes:
        lines.append(f"{_n(len(report.empty_classes), 'empty class folder')}: {', '.join(report.empty_classes)}")
    if report.imbalance_ratio > IMBALANCE_WARN:
        lines.append(f"imbalance {report.imbalance_ratio:.1f}x between the largest and the smallest class")
    odd_modes = sorted(m for m in report.modes if m not in {"RGB", "L"})
    if odd_modes:
        lines.append(f"images in mode(s) {', '.join(odd_modes)} are converted to RGB when loaded")
    return lines


def _duplicate_warnings(groups: list[dict[str, Any]]) -> list[str]:
    """Counts files, not groups: "2 images appear in more than one split" is what a user can check."""
    lines = []
    messages = {
        "cross_split": "appear in more than one split (train/valid/test leakage)",
        "conflicting_labels": "appear under more than one class (conflicting labels)",
        "within_class": "are duplicates within their class",
    }
    for scope in ("cross_split", "conflicting_labels", "within_class"):
        for kind in ("exact", "near"):
            hits = [g for g in groups if g["kind"] == kind and scope in g["scopes"]]
            if hits:
                files = sum(len(g["files"]) for g in hits)
                lines.append(f"{files} images in {_n(len(hits), f'{kind}-duplicate group')} {messages[scope]}")
    return lines


LINK_WARNINGS = {
    "loop": "symbolic link loops, not followed",
    "outside_root": "symbolic links leading outside the data folder, followed",
    "repeat": "symbolic links to a file or folder already listed, listed once",
}


def _link_warnings(links: list[dict[str, str]]) -> list[str]:
    """One line per kind, naming the first links: a loop is the one a user must see."""
    lines = []
    for kind, what in LINK_WARNINGS.items():
        found = [f for f in links if f["kind"] == kind]
        if found:
            named = ", ".join(f"{f['path']} -> {f['target']}" for f in found[:3]) + (", ..." if len(found) > 3 else "")
            lines.append(f"{what}: {len(found)} ({named})")
    return lines


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def write_grids(
    data: LabelledImages, out_dir: Path, *, per_class: int = 4, max_pixels: int = 64_000_000
) -> dict[str, str]:
    """One samples_<split>.png per split: a row of `per_class` images per class, labelled. Returns split -> path."""
    grids = {}
    for split in data.splits:
        rows = _grid_rows(data, split, per_class)
        path = out_dir / f"samples_{split}.png"
        image = render_grid(
            rows, columns=per_class, max_pixels=max_pixels, title=f"{split}: {len(data.split(split))} images"
        )
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        grids[split] = str(path)
    return grids


def _grid_rows(data: LabelledImages, split: str, per_class: int) -> list[tuple[str, list[Path]]]:
    """Evenly spaced picks from each class's path-sorted samples: deterministic and not just the first files."""
    by_class: dict[str, list[Path]] = {c: [] for c in data.classes}
    for sample in data.split(split):
        by_class[sample.label].append(sample.path)
    if len(by_class) > GRID_MAX_CLASSES:
        log.info("sample grid for %s shows the first %d of %d classes", split, GRID_MAX_CLASSES, len(by_class))
    rows = []
    for label, paths in list(by_class.items())[:GRID_MAX_CLASSES]:
        paths.sort()
        picks = sorted({int(k) for k in np.linspace(0, len(paths) - 1, min(per_class, len(paths)))}) if paths else []
        rows.append((f"{label} ({len(paths)})", [paths[k] for k in picks]))
    return rows


def render_grid(rows: list[tuple[str, list[Path]]], *, columns: int, max_pixels: int, title: str = "") -> Image.Image:
    """A white sheet with a caption band above each row of thumbnails (each fitted into GRID_CELL px)."""
    font = ImageFont.load_default(size=14)
    band, pad = 20, 4
    width = max(columns, 1) * (GRID_CELL + pad) + pad
    sheet = Image.new("RGB", (max(width, 240), band + len(rows) * (band + GRID_CELL + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), title, fill="black", font=font)
    for r, (caption, paths) in enumerate(rows):
        top = band + r * (band + GRID_CELL + pad)
        draw.text((pad, top + 2), _fit(caption, font, sheet.width - 2 * pad), fill="black", font=font)
        for c, path in enumerate(paths):
            thumb = _thumbnail(path, max_pixels)
            left = pad + c * (GRID_CELL + pad)
            sheet.paste(thumb, (left + (GRID_CELL - thumb.width) // 2, top + band + (GRID_CELL - thumb.height) // 2))
    return sheet


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """`text` shortened with an ellipsis until it fits `width` pixels: long class names must not run off the sheet."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _thumbnail(path: Path, max_pixels: int) -> Image.Image:
    """The image scaled to fit GRID_CELL (small images scaled up, pixelated so they stay honest); grey on error."""
    try:
        image = open_image(path, max_pixels=max_pixels, draft_size=(2 * GRID_CELL, 2 * GRID_CELL))
    except ImageError as exc:
        log.warning("sample grid: %s", exc)
        return Image.new("RGB", (GRID_CELL, GRID_CELL), "lightgrey")
    small = max(image.size) <= GRID_CELL
    method = Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS
    return ImageOps.contain(image, (GRID_CELL, GRID_CELL), method=method)
