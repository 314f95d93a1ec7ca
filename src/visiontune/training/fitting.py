"""What the pipeline hands a fitter (`Prepared`) and what a fitter hands back (`Fitted`).

The contract between `training.pipeline` and its two fitters, `training.finetune` and
`features.fit`, in a module of its own so that neither fitter imports the pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from visiontune.config import Monitor, RunConfig
from visiontune.data.dataset import LabelledImages
from visiontune.detector import POOLED
from visiontune.models import Classifier
from visiontune.runs.folder import RunFolder
from visiontune.training.events import Callback


@dataclass
class Prepared:
    """What every fitter starts from."""

    config: RunConfig  # resolved: what config.yaml says
    data: LabelledImages
    run: RunFolder
    accelerator: Accelerator
    monitor: Monitor
    imbalance: float
    model: Classifier
    resume: bool
    started: float = field(default_factory=time.perf_counter)  # when this session's pipeline started
    timing: Any = None  # training.budget.Timing: the plan and its estimate, the budget's deadline
    new_model: Callable[[], Classifier] | None = None  # another model of the config's (an ensemble's next member)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


@dataclass
class Fitted:
    """What a fitter hands to `finish`.

    `logits(split)` gives (logits (N, K) float32, class indices (N,)) of the kept model on a split,
    gathered from every process; valid's is read twice (`finish`, the trackers' figures), so both
    fitters keep it rather than score validation again. `weights()` is the context in which
    `model` holds the weights to bundle (an EMA of them, for instance).
    """

    model: Classifier  # what the bundle holds (a FeatureClassifier for the features method)
    logits: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    best_epoch: int | None = None
    best_head: str | None = None
    results: dict[str, Any] = field(default_factory=dict)  # more results.json fields
    bundle_training: dict[str, Any] = field(default_factory=dict)  # more bundle.json `training` fields
    weights: Callable[[], Any] = nullcontext
    elapsed_before: float = 0.0  # seconds earlier sessions of a resumed run took (to their last checkpoint)
    # (N, D) embeddings of a split in `embedding_layout` (training: the rows `detector.bank_rows` keeps);
    # called on every rank
    embeddings: Callable[[str], torch.Tensor] | None = None
    embedding_layout: str = POOLED


@dataclass
class Hooks:
    """Optional progress callbacks for a display: epochs (fine-tuning), images embedded and heads (features)."""

    callbacks: Sequence[Callback] = ()
    on_total: Callable[[int], None] | None = None
    progress: Callable[[int], None] | None = None
    on_head: Callable[[Any], None] | None = None
    on_plan: Callable[[str], None] | None = None  # the recipe and its estimated time (training.budget), once
    # before an ensemble's member trains: its Prepared (its seed, folder and model), its number (1-based), how many
    on_member: Callable[[Prepared, int, int], None] | None = None
