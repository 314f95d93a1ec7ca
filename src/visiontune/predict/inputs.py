"""What the user typed after `predict MODEL`: files, folders and glob patterns, expanded to image paths."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from visiontune.data.images import is_image_file

_GLOB_CHARS = frozenset("*?[")


@dataclass
class Inputs:
    """Expanded paths in the order given (each folder's images sorted), and whether any folder was given."""

    paths: list[Path]
    folders: list[Path]
    empty: list[str]  # patterns or folders that matched no image: worth a warning


def expand_inputs(arguments: list[str]) -> Inputs:
    """Each argument as one file (kept even when missing: predict reports it), a folder's images, or a glob's.

    Folders are searched recursively for image extensions (any case), hidden files skipped;
    duplicates (a file named twice, or by a folder and a glob) are kept once, first position wins.
    """
    paths: list[Path] = []
    folders: list[Path] = []
    empty: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            folders.append(path)
            found = _images_under(path)
        elif not path.exists() and _GLOB_CHARS & set(argument):
            found = sorted(Path(p) for p in glob.glob(argument, recursive=True) if is_image_file(p))
        else:
            found = [path]
        if not found:
            empty.append(argument)
        paths.extend(found)
    return Inputs(list(dict.fromkeys(paths)), folders, empty)


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file()
    )
