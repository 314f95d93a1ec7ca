"""The review page: the suspects one at a time (or as a grid), a key per decision, each written as it is made.

    GET  /                 the page (static/, no CDN)
    GET  /api/state        classes, the suspects in review order with their decisions so far
    GET  /api/image/{id}   suspect `id`'s image as PNG (only suspects' files are served, by number)
    POST /api/decide       {"id", "action": keep|relabel|exclude|no_class, "label"} -> a row of corrections.csv

Decisions already in corrections.csv are shown as made, so reopening the page (or the server)
continues at the first undecided suspect. Nothing but corrections.csv is written; the images are
only read. The server answers loopback names only and refuses cross-site posts (serve/guards.py).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiontune.cleaning.find import CleanResult
from visiontune.cleaning.ranking import Issue
from visiontune.data import corrections as corr
from visiontune.data.images import open_image
from visiontune.errors import ImageError, MissingPackageError

try:  # module level: FastAPI reads the routes' annotations from this module's names
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel

    from visiontune.serve.guards import HostGuard, allowed_hosts
except ImportError as exc:
    raise MissingPackageError(f"the review page needs {exc.name}: pip install 'visiontune[serve]'") from exc

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_SIDE = 512  # pixels of the served image's longer side


@dataclass
class Review:
    """The suspects under review, the corrections file, and the decisions known so far (by relative path)."""

    suspects: list[Issue]
    kinds: dict[Path, list[str]]  # every kind of issue each suspect has
    classes: list[str]
    relative: dict[Path, str]
    corrections: Path
    decisions: dict[str, corr.Correction]

    @classmethod
    def of(cls, result: CleanResult, corrections: Path) -> Review:
        kinds: dict[Path, list[str]] = {}
        for issue in result.issues:
            kinds.setdefault(issue.path, []).append(issue.kind)
        suspects = result.suspects()
        relative = {i.path: result.relative(i.path) for i in suspects}
        decisions = corr.latest(corr.read_corrections(corrections))
        return cls(suspects, kinds, list(result.classes), relative, corrections, decisions)

    def item(self, number: int) -> dict[str, Any]:
        issue = self.suspects[number]
        decision = self.decisions.get(self.relative[issue.path])
        return {
            "id": number,
            "path": self.relative[issue.path],
            "given": issue.given,
            "suggested": issue.suggested,
            "kind": issue.kind,
            "kinds": self.kinds[issue.path],
            "score": issue.score,
            "top": [{"label": label, "probability": p} for label, p in issue.top],
            "decision": None if decision is None else {"action": decision.action, "label": decision.label},
        }

    def state(self) -> dict[str, Any]:
        return {"classes": self.classes, "corrections": str(self.corrections),
                "items": [self.item(k) for k in range(len(self.suspects))]}  # fmt: skip

    def decide(self, number: int, action: str, label: str | None) -> dict[str, Any]:
        """Append one decision to corrections.csv and remember it; ValueError when it makes no sense."""
        if not 0 <= number < len(self.suspects):
            raise ValueError(f"no suspect number {number}")
        if action not in corr.ACTIONS:
            raise ValueError(f"action must be one of {', '.join(corr.ACTIONS)}. Received: {action!r}")
        if action == "relabel" and label not in self.classes:
            raise ValueError(f"relabel needs one of the classes as label. Received: {label!r}")
        issue = self.suspects[number]
        row = corr.Correction(self.relative[issue.path], action, label if action == "relabel" else "", issue.given,
                              "review", issue.score, corr.now())  # fmt: skip
        corr.append_corrections(self.corrections, [row])
        self.decisions[row.path] = row
        return self.item(number)

    def png(self, number: int) -> bytes:
        if not 0 <= number < len(self.suspects):
            raise KeyError(number)
        image = open_image(self.suspects[number].path)
        image.thumbnail((MAX_SIDE, MAX_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()


class Decision(BaseModel):
    """One decision as the page posts it."""

    id: int
    action: str
    label: str | None = None


def create_review_app(review: Review, *, host: str = "127.0.0.1") -> FastAPI:
    """The FastAPI app of the review page (needs the `serve` extra).

    Example:
        >>> app = create_review_app(Review.of(clean("demo"), Path("demo/corrections.csv")))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8765)  # doctest: +SKIP
    """
    app = FastAPI(title="visiontune review", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(HostGuard, hosts=allowed_hosts(host))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "review.html")

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return review.state()

    @app.get("/api/image/{number}")
    def image(number: int) -> Response:
        try:
            return Response(review.png(number), media_type="image/png", headers={"Cache-Control": "max-age=3600"})
        except KeyError as exc:
            raise HTTPException(404, f"no suspect number {number}") from exc
        except ImageError as exc:
            raise HTTPException(422, str(exc)) from exc

    @app.post("/api/decide")
    def decide(decision: Decision) -> dict[str, Any]:
        try:
            return review.decide(decision.id, decision.action, decision.label)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

    return app
