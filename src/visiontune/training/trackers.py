"""`Tracking`: the pipeline's side of the trackers that `--log` names (see `training.tracking`).

It builds them (on the main process; each library checked on every rank), starts them once the
run files are written, hands them to the fitter as callbacks, and finishes them with the final
metrics and figures, or fails them when the run stops.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visiontune.config import RunConfig
from visiontune.training.fitting import Fitted, Hooks, Prepared
from visiontune.training.mlflow_log import MLflowLogger
from visiontune.training.tensorboard_log import TensorBoardLogger
from visiontune.training.tracking import RunEnd, Tracker, draw_figures, require

if TYPE_CHECKING:
    from visiontune.training.pipeline import TrainResult

log = logging.getLogger(__name__)


def make_trackers(config: RunConfig, *, main: bool) -> list[Tracker]:
    """The trackers `train.log` names, on the main process; each library checked on every rank."""
    for name in config.train.log:
        require(name)
    if not main:
        return []
    chosen: list[Tracker] = []
    for name in config.train.log:
        if name == "tensorboard":
            chosen.append(TensorBoardLogger())
        else:
            chosen.append(MLflowLogger(config))
    return chosen


class Tracking:
    """The pipeline's side of the trackers: start them, hand them to the fitter, finish or fail them."""

    def __init__(self, config: RunConfig, *, main: bool) -> None:
        self.trackers = make_trackers(config, main=main)

    def hooks(self, hooks: Hooks) -> Hooks:
        """Trackers before the caller's callbacks (an epoch a callback stops at, a pruned trial's, is logged),
        and told of each ensemble member after the caller's `on_member`."""
        if not self.trackers:
            return hooks
        shown = hooks.on_member

        def on_member(member: Prepared, number: int, of: int) -> None:
            if shown is not None:
                shown(member, number, of)
            for tracker in self.trackers:
                tracker.member(member, number, of)

        return dataclasses.replace(hooks, callbacks=[*self.trackers, *hooks.callbacks], on_member=on_member)

    @contextmanager
    def started(self, p: Prepared) -> Iterator[None]:
        """Trackers started for the body; failed (and re-raised) when it raises."""
        for tracker in self.trackers:
            tracker.start(p)
        try:
            yield
        except BaseException as error:
            for tracker in self.trackers:
                _quietly(tracker.fail, p, error)
            raise

    def finish(self, p: Prepared, fitted: Fitted, result: TrainResult) -> None:
        if not self.trackers:
            return
        epochs = p.run.epochs()
        step = int(epochs[-1]["epoch"]) if epochs else 0
        with tempfile.TemporaryDirectory(prefix="visiontune-tracking-") as folder:
            figures = draw_figures(p, fitted, Path(folder))
            end = RunEnd(result, step, figures)
            for tracker in self.trackers:
                tracker.finish(p, end)


def _quietly(call: Any, *args: Any) -> None:
    """A tracker that fails while the run is already failing must not hide the run's own error."""
    try:
        call(*args)
    except Exception as exc:
        log.warning("a tracker could not record the failure: %s", exc)
