"""The ensemble fitter: `finetune.members` models trained one after another, bundled as one `Ensemble`.

Member 1 is the run itself (its seed, the run folder's checkpoints and metrics); member i + 1 trains
with seed + i in members/<i + 1>/, from its own new head (and, for scratch, its own weights), on
the same split and the same decoded-once pixels, with the recipe member 1 resolved (its range
test's learning rate, when it ran one). Under a --budget each member gets an equal share of the
time left when it starts (`budget.Timing.member_stop`). An interrupted run resumes the member it
was in: the ones before reload their kept epoch (their schedules have ended), the ones after start.

`finish` then scores the ensemble as one model: its averaged logits calibrated on validation, its
embeddings for the unknown detector, one bundle.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from accelerate.utils import set_seed

from visiontune.models import Ensemble
from visiontune.training.finetune import SplitScores, Trained, fit_finetune, train_kept
from visiontune.training.fitting import Fitted, Hooks, Prepared


def fit_members(p: Prepared, hooks: Hooks) -> Fitted:
    """One fine-tuned model (`fit_finetune`), or `finetune.members` of them as an Ensemble."""
    count = int(p.config.finetune.members or 1)
    if count == 1:
        return fit_finetune(p, _with_stop(p, hooks, 0))
    trained: list[Trained] = []
    members: list[Prepared] = []
    for index in range(count):  # member 1 is `p` itself: a range test it runs sets p.config's lr for the rest
        member = p if index == 0 else _member(p, index)
        if hooks.on_member is not None and p.is_main:  # the display's heading; each tracker's run for the member
            hooks.on_member(member, index + 1, count)
        done = train_kept(member, _with_stop(p, hooks, index))
        _settle_weights(done)
        trained.append(done)
        members.append(member)
    ensemble = Ensemble([t.trainer.raw_model for t in trained]).eval()
    scores = SplitScores(trained[-1].trainer, seed=p.config.train.seed, model=ensemble)
    listed = [_row(i, m, t, p.monitor.name) for i, (m, t) in enumerate(zip(members, trained, strict=True))]
    return Fitted(
        ensemble,
        scores.logits,
        best_epoch=trained[0].epoch,
        results={"members": listed},
        bundle_training={"members": listed},
        elapsed_before=max(t.elapsed_before for t in trained),
        embeddings=scores.embeddings,
        embedding_layout=scores.layout,
    )


def _member(p: Prepared, index: int) -> Prepared:
    """Member `index` (0-based, > 0): the first member's resolved config with its own seed, folder and model."""
    if p.new_model is None:
        raise RuntimeError("an ensemble needs Prepared.new_model to build its further members")
    seed = p.config.train.seed + index
    run = p.run.member(index)
    resume = p.resume and run.checkpoint("last").is_file()
    set_seed(seed)  # the new head's (or scratch model's) initial weights, and this member's data order
    config = p.config.replace("train", seed=seed)
    run.path.mkdir(parents=True, exist_ok=True)
    if p.is_main and not resume:
        run.write_config(config)
        fields = {"member": index + 1, "of": int(p.config.finetune.members or 1), "seed": seed, "run": str(p.run.path)}
        if p.resume:  # keep what run.json recorded of a member stopped before its first checkpoint (its MLflow run)
            run.update_info(fields)
        else:
            run.write_info(fields)
    return dataclasses.replace(p, config=config, run=run, model=p.new_model(), resume=resume)


def _with_stop(p: Prepared, hooks: Hooks, index: int) -> Hooks:
    """The hooks with member `index`'s BudgetStop, when the run has a budget."""
    stop = p.timing.member_stop(index, now=time.perf_counter()) if p.timing is not None else None
    return hooks if stop is None else dataclasses.replace(hooks, callbacks=[*hooks.callbacks, stop])


def _settle_weights(trained: Trained) -> None:
    """Make the weights to bundle (an EMA of them, if the recipe keeps one) the model's own, in eval mode."""
    trainer = trained.trainer
    if trainer.ema is not None:
        with trainer.ema_weights():
            state = {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}
        trainer.raw_model.load_state_dict(state)
        trainer.ema = None
    trainer.raw_model.eval()
    trainer.raw_model.requires_grad_(False)


def _row(index: int, member: Prepared, trained: Trained, monitor: str) -> dict[str, Any]:
    """What results.json and the bundle say of one member."""
    return {
        "member": index + 1,
        "seed": member.config.train.seed,
        "kept_epoch": trained.epoch,
        "monitor": monitor,
        "score": trained.score,  # the monitor's, on validation, of this member alone
        "folder": str(member.run.path),
    }
