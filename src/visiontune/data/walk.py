"""Listing the files under a folder, following each symbolic link once per real path.

A plain `os.walk(followlinks=True)` walks a loop such as `trouser/loop -> ..` until the path is
too long, so one class collects every other class's images many times over, and a file reached
through two links is listed twice. Here each real folder is entered once and each real file is
listed once; links that loop, leave the data root, or reach something already listed are returned
as `LinkFinding`s so the audit can show them. Nothing here opens an image.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from pathlib import Path

LINK_KINDS = {
    "loop": "a loop (points to a folder that contains it); not followed",
    "outside_root": "leads outside the data folder; followed",
    "repeat": "reaches a file or folder already listed; listed once",
}


@dataclass(frozen=True)
class LinkFinding:
    """A symbolic link the walk did not simply follow; `target` is its real path and `kind` a key of LINK_KINDS."""

    path: Path
    target: Path
    kind: str

    @property
    def note(self) -> str:
        return LINK_KINDS[self.kind]


def walk_files(start: Path, *, root: Path | None = None, links: list[LinkFinding] | None = None) -> list[Path]:
    """All non-hidden files under `start`, each real file once, sorted by relative path so every machine sees one order.

    `root` is the data folder `start` belongs to (default `start`): a folder containing it is a loop.
    Findings are appended to `links` when given. A file reached both directly and through a link is
    listed under its direct path.

    Example:
        >>> findings: list[LinkFinding] = []
        >>> files = walk_files(Path("photos/cat"), root=Path("photos"), links=findings)
    """
    walk = _Walk(root or start, links if links is not None else [])
    return walk.files(start)


@dataclass(order=True)
class _Entry:
    """A folder or file waiting in the walk; direct paths sort before those reached through a link."""

    via_link: bool
    relative: str
    path: Path
    real: str
    link: bool = False


class _Walk:
    def __init__(self, root: Path, links: list[LinkFinding]) -> None:
        self.root, self.real_root = root, os.path.realpath(root)
        self.links = links
        self.entered: set[str] = set()

    def files(self, start: Path) -> list[Path]:
        real = os.path.realpath(start)
        if start != self.root and _within(self.real_root, real):  # a class folder linked to the root or above
            self.links.append(LinkFinding(start, Path(real), "loop"))
            return []
        self._note_outside(_Entry(False, "", start, real, start.is_symlink()))
        self.entered.add(real)
        folders = [_Entry(False, "", start, real)]
        found: list[_Entry] = []
        while folders:
            folder = heapq.heappop(folders)
            if folder.relative and not self._enter(folder):
                continue
            for entry in self._children(start, folder):
                if _is_dir(entry.path):
                    heapq.heappush(folders, entry)
                else:
                    found.append(entry)
        return self._once_per_real_file(found)

    def _enter(self, folder: _Entry) -> bool:
        """Enter each real folder once; one that contains the data root, or the link itself, is a loop."""
        looped = folder.link and _within(os.path.realpath(folder.path.parent), folder.real)
        if looped or _within(self.real_root, folder.real):
            self.links.append(LinkFinding(folder.path, Path(folder.real), "loop"))
            return False
        if folder.real in self.entered:
            self.links.append(LinkFinding(folder.path, Path(folder.real), "repeat"))
            return False
        self.entered.add(folder.real)
        self._note_outside(folder)
        return True

    def _children(self, start: Path, folder: _Entry) -> list[_Entry]:
        try:
            entries = list(os.scandir(folder.path))
        except OSError:  # unreadable folder: nothing to list, as os.walk did
            return []
        children = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            link = entry.is_symlink()
            real = os.path.realpath(path) if link else os.path.join(folder.real, entry.name)
            relative = path.relative_to(start).as_posix()
            children.append(_Entry(folder.via_link or link, relative, path, real, link))
        return children

    def _note_outside(self, entry: _Entry) -> None:
        """A link out of the data root is followed (symlink farms are common) but shown: it may not be meant."""
        if entry.link and not _within(entry.real, self.real_root):
            self.links.append(LinkFinding(entry.path, Path(entry.real), "outside_root"))

    def _once_per_real_file(self, found: list[_Entry]) -> list[Path]:
        kept: dict[str, _Entry] = {}
        for entry in sorted(found):
            if entry.real in kept:
                self.links.append(LinkFinding(entry.path, Path(entry.real), "repeat"))
            else:
                kept[entry.real] = entry
                self._note_outside(entry)
        return [e.path for e in sorted(kept.values(), key=lambda e: e.relative)]


def _within(path: str, folder: str) -> bool:
    """True when `path` is `folder` or inside it (both real paths)."""
    return os.path.commonpath([path, folder]) == folder


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a link loop between two links (a -> b -> a) reads as a file, which then fails to decode
        return False
