"""`Callback`: the hooks the trainer calls, fastai's event names; every hook is a no-op by default.

A module of its own with nothing heavy imported, so a display (the CLI's) can subclass it
without loading torch. The callbacks training uses live in `training.callbacks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visiontune.training.trainer import Trainer


class Callback:
    """Base class; override the hooks you need."""

    def before_fit(self, trainer: Trainer) -> None:
        """Once, before the first epoch (also after a resume)."""

    def before_phase(self, trainer: Trainer, phase: str) -> None:
        """When a phase (frozen, unfrozen, fit) starts or resumes."""

    def before_epoch(self, trainer: Trainer) -> None:
        """At the start of each epoch."""

    def after_batch(self, trainer: Trainer, loss: float, batch_size: int) -> None:
        """After each optimizer step's batch, with its training loss."""

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """After validation, with the epoch's row of metrics."""

    def after_fit(self, trainer: Trainer) -> None:
        """Once, after the last epoch or an early stop."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""
