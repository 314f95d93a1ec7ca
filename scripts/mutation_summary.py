"""Per-module mutation score after `mutmut run` (make mutation): killed share and the mutants left alive.

mutmut writes one `mutants/<source>.meta` per mutated file, mapping each mutant to the exit code of
its tests. A mutant counts as killed when its tests failed (1, 3) or hung past the timeout (the
mutant made the code loop); "survived", "no tests" and anything unchecked count against the score.
Usage: python scripts/mutation_summary.py [--survivors]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}
STATUS = {0: "survived", 5: "no tests", 33: "no tests", None: "not checked"}


def status(code: int | None) -> str:
    return KILLED.get(code) or STATUS.get(code, "suspicious")  # type: ignore[arg-type]


def main(show_survivors: bool) -> None:
    metas = sorted(Path("mutants").rglob("*.py.meta"))
    if not metas:
        sys.exit("no mutants/**/*.meta: run `mutmut run` (make mutation) first")
    total: Counter[str] = Counter()
    alive: list[str] = []
    print(f"{'module':40} {'mutants':>7} {'killed':>7} {'timeout':>7} {'alive':>6} {'score':>6}")
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(status(code) for code in codes.values())
        total.update(counts)
        alive += [
            f"{name} [{status(code)}]" for name, code in codes.items() if status(code) not in {"killed", "timeout"}
        ]
        print(_row(str(meta.relative_to("mutants"))[: -len(".meta")], counts))
    print(_row("all", total))
    if show_survivors:
        print("\n".join(["", "alive:", *alive]))


def _row(name: str, counts: Counter[str]) -> str:
    n = sum(counts.values())
    dead = counts["killed"] + counts["timeout"]
    return f"{name:40} {n:7d} {counts['killed']:7d} {counts['timeout']:7d} {n - dead:6d} {dead / max(n, 1):6.1%}"


if __name__ == "__main__":
    main("--survivors" in sys.argv[1:])
