"""What every benchmark prints: each side's runs, the best of each, and the ratio ours / reference.

Best-of rather than mean: on a shared machine the slow runs measure the neighbours, not the code.
Imported by the scripts beside it (`python bench/NAME.py` puts bench/ on sys.path).
"""

from __future__ import annotations

from collections.abc import Callable


def rates(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def print_ratio(reference: tuple[str, list[float]], ours: tuple[str, list[float]], unit: str = "images/s") -> float:
    """Print both sides (label, runs) and the ratio of their best runs; returns the ratio."""
    width = max(len(reference[0]), len(ours[0])) + 1
    best = {}
    for label, runs in (reference, ours):
        best[label] = max(runs)
        print(f"{label + ':':<{width}} {best[label]:8.1f} {unit} (runs: {rates(runs)})")
    ratio = best[ours[0]] / best[reference[0]]
    print(f"ratio ours / reference: {ratio:.2f}x")
    return ratio


Runs = list[float]


def alternate(repeats: int, reference: Callable[[], float], ours: Callable[[], float]) -> tuple[Runs, Runs]:
    """Run both sides `repeats` times, alternating, so a slow spell of the machine hits both."""
    refs, ourss = [], []
    for _ in range(repeats):
        refs.append(reference())
        ourss.append(ours())
    return refs, ourss
