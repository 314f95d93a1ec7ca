"""Property: `visiontune inspect` on any small messy tree answers 0 or 3, prints no traceback, and writes only to --out.

Hypothesis draws class folders of real PNGs, garbage and empty files with odd names, empty
folders, and symbolic links to files, to folders, back up the tree, to the root's parent and to
nowhere. The file-info cache lives under $VISIONTUNE_CACHE_DIR (set by conftest), outside the tree.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.cli.test_cli import visiontune
from tests.data import image_factories as factories

# Any name a Linux file system takes: no "/" or NUL, not "." or "..", at most 255 bytes (undecodable bytes included).
text_names = st.text(st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)), min_size=1, max_size=12)
byte_names = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\x00" not in b).map(os.fsdecode)
names = st.one_of(st.sampled_from(["cat", "dog", "train", "val", ".hidden"]), text_names, byte_names).filter(
    lambda n: n not in {".", ".."} and len(os.fsencode(n)) <= 255
)
SUFFIXES = (".png", ".PNG", ".jpg", ".txt", "")
FILE_KINDS = ("image", "image", "garbage", "empty", "truncated")
LINK_TARGETS = ("parent", "root", "root_parent", "self", "sibling", "file", "outside_dir", "outside_file", "dangling")


@st.composite
def trees(draw: st.DrawFn) -> dict:
    """A plan: class folders (name -> files and an optional empty sub-folder) and links (where, name, target kind)."""
    files = st.lists(st.tuples(names, st.sampled_from(SUFFIXES), st.sampled_from(FILE_KINDS)), max_size=4)
    classes = draw(st.dictionaries(names, st.tuples(files, st.booleans()), min_size=1, max_size=3))
    links = st.tuples(st.integers(0, 3), names, st.sampled_from(LINK_TARGETS))
    return {"classes": classes, "links": draw(st.lists(links, max_size=4))}


def _build(base: Path, plan: dict, images: np.ndarray) -> Path:
    root, outside = base / "data", base / "outside"
    root.mkdir()
    outside.mkdir()
    Image.fromarray(images[0]).save(outside / "elsewhere.png")
    for k, (name, (files, empty_sub)) in enumerate(plan["classes"].items()):
        folder = root / name
        folder.mkdir(exist_ok=True)
        if empty_sub:
            (folder / "empty").mkdir(exist_ok=True)
        for i, (stem, suffix, kind) in enumerate(files):
            _write(_fit(folder, stem, suffix), kind, images[(7 * k + i) % len(images)])
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    for where, name, target in plan["links"]:
        place = folders[where % len(folders)] if folders and where else root
        link = _fit(place, name, "")
        if not os.path.lexists(link):
            link.symlink_to(_target(target, place, root, folders, outside))
    return root


def _fit(folder: Path, stem: str, suffix: str) -> Path:
    """stem + suffix, shortened to the 255-byte name limit."""
    name = os.fsencode(stem + suffix)[-255:] if len(os.fsencode(stem + suffix)) > 255 else os.fsencode(stem + suffix)
    return folder / os.fsdecode(name if name not in {b".", b".."} else b"x" + name)


def _write(path: Path, kind: str, pixels: np.ndarray) -> None:
    if path.exists():
        return
    if kind == "image":
        Image.fromarray(pixels).save(path, format="PNG")
    elif kind == "garbage":
        path.write_bytes(hashlib.sha256(path.name.encode("utf-8", "surrogateescape")).digest() * 3)
    elif kind == "empty":
        factories.write_empty_file(path)
    else:
        factories.write_truncated_png(path)


def _target(kind: str, place: Path, root: Path, folders: list[Path], outside: Path) -> Path | str:
    other = next((f for f in folders if f != place), place)
    files = sorted(p for f in folders for p in f.iterdir() if p.is_file())
    return {
        "parent": "..",
        "root": root,
        "root_parent": root.parent,
        "self": ".",
        "sibling": other,
        "file": files[0] if files else root / "missing.png",
        "outside_dir": outside,
        "outside_file": outside / "elsewhere.png",
        "dangling": "no-such-file.png",
    }[kind]


def _snapshot(base: Path) -> dict[str, tuple]:
    """Every path under `base` (links not followed): its type, size, mtime and content or link target."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            if os.path.islink(path):
                seen[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                seen[path] = ("dir", st_.st_mtime_ns)
            else:
                seen[path] = ("file", st_.st_size, st_.st_mtime_ns, hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return seen


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=trees())
@example(plan={"classes": {"cat": ([("\udc80", ".png", "image")], False)}, "links": []})  # sqlite refused the name
@example(plan={"classes": {"trouser": ([("a", ".png", "image")], False)}, "links": [(1, "loop", "parent")]})
def test_inspect_survives_any_small_tree(plan: dict, tmp_path: Path, fashion: dict[str, np.ndarray]) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as temp:
        base = Path(temp)
        root = _build(base, plan, fashion["train_images"][:40])
        out = base / "report"
        before = _snapshot(base)
        proc = visiontune("inspect", str(root), "--out", str(out), "--quiet")
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        assert proc.returncode in (0, 3), proc.stdout + proc.stderr
        after = {path: facts for path, facts in _snapshot(base).items() if not path.startswith(str(out))}
        assert after == before
