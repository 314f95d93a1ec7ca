"""Finding wrong labels: out-of-fold probabilities on cached features, confident learning, a review page.

Owners: `crossval` (the network that embeds, k-fold probabilities), `ranking` (cleanlab's label
errors and class health, outliers, conflicting duplicates, ambiguous images), `report` (issues.csv,
clean.json, the grids), `find` (`clean`: data -> ranked issues; `apply_suggestions`), `review` (the
local review page). Decisions live in corrections.csv, owned by `data.corrections`, which every
command applies when it reads the data.

The package is `cleaning` rather than `clean` so that `visiontune.clean(...)`, the public function,
is not shadowed by a submodule of the same name once it is imported.

Example:
    >>> from visiontune.cleaning import clean  # doctest: +SKIP
    >>> result = clean("demo", out_dir="demo-clean")  # doctest: +SKIP
    >>> result.health.classes[0], result.issues[0].suggested  # doctest: +SKIP
"""

from __future__ import annotations

from visiontune.cleaning.find import CleanResult, apply_suggestions, clean
from visiontune.cleaning.ranking import Health, Issue

__all__ = ["CleanResult", "Health", "Issue", "apply_suggestions", "clean"]
