"""`Ensemble`: several fine-tuned classifiers answering as one, their probabilities averaged.

Members are the same backbone and input size trained with different seeds (`finetune.members`):
they make different mistakes, so the average is right more often than any one of them. On the
demo, two 5-minute EfficientNet-Lite2 runs averaged score 0.914 on the 10,000 Fashion-MNIST test
images against 0.903 for one run trained twice as long (bench/RESULTS.md).

The output is a logit vector like any classifier's: the log of the members' mean probability,
so `softmax(output)` is that mean, and temperature scaling, conformal sets, the unknown scores,
ONNX export and serving treat an ensemble as one model. One bundle holds all members' weights
(`members.0.`, `members.1.` ... in model.safetensors); its `arch` lists each member's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from visiontune.errors import ModelError
from visiontune.models.classifier import Classifier

MEMBERS_KEY = "ensemble"  # `arch[MEMBERS_KEY]`: the members' archs, in order


class Ensemble(nn.Module):
    """Classifiers of one input size and class list whose averaged probabilities are the answer.

    Example:
        >>> ensemble = Ensemble([model_a, model_b])  # doctest: +SKIP
        >>> ensemble(images).softmax(1)  # the mean of the two models' probabilities  # doctest: +SKIP
    """

    def __init__(self, members: Sequence[Classifier]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ModelError(f"an ensemble needs at least 2 members, not {len(members)}")
        first = members[0]
        for member in members[1:]:
            if member.num_classes != first.num_classes:
                raise ModelError(f"ensemble members disagree on the classes: {member.num_classes}, {first.num_classes}")
            if member.preprocessing != first.preprocessing:
                raise ModelError("ensemble members must share their preprocessing (backbone family and input size)")
        self.members = nn.ModuleList(members)
        self.preprocessing = first.preprocessing

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes  # type: ignore[no-any-return]

    @property
    def arch(self) -> dict[str, Any]:
        """The members' archs, plus the first member's backbone and size for what only reads those."""
        first = self.members[0].arch
        return {
            MEMBERS_KEY: [m.arch for m in self.members],
            "backbone": first["backbone"],
            "num_classes": self.num_classes,
            "image_size": first["image_size"],
        }

    @classmethod
    def from_arch(cls, arch: dict[str, Any]) -> Ensemble:
        listed = arch.get(MEMBERS_KEY)
        if not isinstance(listed, list) or len(listed) < 2 or not all(isinstance(a, dict) for a in listed):
            raise ModelError(f"`arch.{MEMBERS_KEY}` must list at least 2 member archs")
        return cls([Classifier.from_arch(member) for member in listed])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return average_logits([member(x) for member in self.members])


def average_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, K) logits of each member -> (B, K) log of their mean probability (float32).

    Computed in log space (logsumexp of log-softmax), so a member certain to 1e-30 neither
    underflows nor dominates.
    """
    stacked = torch.stack([z.float().log_softmax(dim=1) for z in logits])
    return stacked.logsumexp(dim=0) - math.log(len(logits))


def members_of(model: nn.Module) -> list[nn.Module]:
    """An ensemble's members; any other model is its own one member."""
    return list(model.members) if isinstance(model, Ensemble) else [model]
