"""Time budgets: measure a few steps on this machine, plan a run that fits, stop it at the deadline.

Nothing here guesses a machine's speed: `measure` times a few training and inference steps of the
run's own model at two input sizes (a copy of it, so its weights and BatchNorm statistics are left
alone) and one decode per sample file, and fits seconds per image as fixed + per-pixel cost.
`estimate` turns those into the seconds a recipe takes (decoding once, the frozen and unfrozen
epochs with their validation, the final scoring and the k-NN detector's bank), and `plan_budget`
picks the recipe expected to be most accurate among those that fit: epochs first (accuracy climbs
steeply over the first three epochs; bench/RESULTS.md), then input size; when no fine-tuning fits,
frozen features. A budget long enough to saturate the default backbone (its plan reaches
SATURATED epochs) buys a larger one instead, when the user left the backbone to us: the larger
backbones offered are timed at the planned size (the one taken also at the smallest size, for its
own cost line) and the largest whose own plan still reaches SATURATED epochs is taken
(bench/RESULTS.md: on the demo, Lite0 stops improving near 15 epochs; Lite2 at 12-16 epochs
scores 0.3-0.5 points more on 10,000 test images, at 8 epochs no more).
A budget that saturates the largest backbone too buys an ensemble when the user left the members
to us: the most members (up to MOST_MEMBERS) whose share of the budget each still reaches
SATURATED epochs, trained one after another with their own seeds (on the demo, two 5-minute
Lite2 runs averaged score 0.914 on 10,000 test images, one 10-minute run 0.903).
`BudgetStop` ends training early (the epoch under way is validated and checkpointed) when the run
would otherwise overrun.

Every function takes its clock, so tests plan with a fake one.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from visiontune.config import parse_duration
from visiontune.data.images import open_image
from visiontune.detector import BANK_CAP
from visiontune.errors import ImageError
from visiontune.system import evaluation_batch_size
from visiontune.training.events import Callback

log = logging.getLogger(__name__)

Clock = Callable[[], float]
MIN_SIZE = 64  # below this, pretrained backbones lose more accuracy than the time saved buys (digits, 28 px)
SAFETY = 0.95  # plan to this share of the time left; BudgetStop catches the rest (at 0.9 a 2-min run ended at 0.88x)
LONG_S = 15 * 60  # a default run longer than this gets a warning naming the faster options
SATURATED = 12  # epochs past which the default backbone gains little on the demo, and a larger one a few tenths
LARGER = ("efficientnet_lite2", "efficientnet_lite1")  # what a budget past SATURATED may buy, largest first
MOST_MEMBERS = 4  # a budget plans at most this many members: past it each buys little and costs a forward pass


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@dataclass(frozen=True)
class Costs:
    """Seconds per image on this machine: (fixed, per pixel) for each kind of pass, and one decode."""

    train: tuple[float, float]  # forward + backward with every layer learning
    frozen: tuple[float, float]  # forward with the backbone frozen (the head's backward is negligible)
    infer: tuple[float, float]  # evaluation forward
    decode: float = 0.0  # reading and decoding one file (once: the decoded-image cache keeps it)

    def per_image(self, kind: str, size: int) -> float:
        fixed, per_pixel = getattr(self, kind)
        return max(fixed + per_pixel * size * size, 0.0)

    def through(self, other: Costs, size: int, mine: int) -> Costs:
        """Lines through this estimate at `mine` px and `other`'s at `size` px, kind by kind: a network's own
        line from two single-size timings."""
        lines = {}
        for kind in ("train", "frozen", "infer"):
            points = sorted([(size * size, other.per_image(kind, size)), (mine * mine, self.per_image(kind, mine))])
            lines[kind] = _line(points)
        return Costs(**lines, decode=self.decode)

    def scaled_to(self, other: Costs, size: int) -> Costs:
        """These costs scaled, kind by kind, to `other`'s at `size`: another backbone of the same family,
        timed at one size only, costs the same multiple of this one's at every size."""
        lines = {}
        for kind in ("train", "frozen", "infer"):
            mine = self.per_image(kind, size)
            ratio = other.per_image(kind, size) / mine if mine > 0 else 1.0
            fixed, per_pixel = getattr(self, kind)
            lines[kind] = (fixed * ratio, per_pixel * ratio)
        return Costs(**lines, decode=self.decode)


@dataclass(frozen=True)
class Plan:
    """A recipe and the seconds it is expected to take."""

    method: str  # "finetune" or "features"
    image_size: int
    freeze_epochs: int
    epochs: int
    seconds: float  # all members together
    backbone: str | None = None  # a larger backbone the budget bought; None: the run's own
    members: int = 1  # models trained one after another with this recipe each, bundled as an ensemble

    @property
    def saturated(self) -> bool:
        """Fine-tuning for SATURATED epochs or more: past where more epochs of the same backbone help."""
        return self.method != "features" and self.epochs + self.freeze_epochs >= SATURATED

    def describe(self) -> str:
        model = f"{self.backbone}, " if self.backbone else ""
        if self.members > 1:
            model = f"{self.members} members, each {model}"
        if self.method == "features":
            return f"{model}frozen features at {self.image_size} px"
        frozen = f"{self.freeze_epochs} frozen + " if self.freeze_epochs else ""
        return f"{model}{frozen}{self.epochs} epoch(s) at {self.image_size} px"


@dataclass(frozen=True)
class Larger:
    """A larger backbone a long budget may buy instead of the run's: its name, its native input size and
    how to build it (pretrained, the run's classes)."""

    name: str
    native_size: int
    build: Callable[[], torch.nn.Module]


@dataclass(frozen=True)
class Workload:
    """How many images each pass reads: training, evaluation (valid + test) and files still to decode."""

    train: int
    valid: int
    test: int = 0
    decode: int = 0


def estimate(costs: Costs, workload: Workload, *, method: str, size: int, freeze_epochs: int, epochs: int) -> float:
    """Seconds a recipe takes from here: decoding once, epochs with validation, final scoring and the bank."""
    infer = costs.per_image("infer", size)
    decode = workload.decode * costs.decode
    final = finishing(costs, workload, size)
    if method == "features":
        return decode + (workload.train + workload.valid + workload.test) * infer + final / 4  # heads: seconds
    validate = workload.valid * infer
    frozen = freeze_epochs * (workload.train * costs.per_image("frozen", size) + validate)
    unfrozen = epochs * (workload.train * costs.per_image("train", size) + validate)
    return decode + frozen + unfrozen + final


def finishing(costs: Costs, workload: Workload, size: int) -> float:
    """Seconds after the last epoch: valid (logits and embeddings in one pass) and test scored, the k-NN
    detector's bank embedded, the bundle."""
    return (workload.valid + workload.test + min(workload.train, BANK_CAP)) * costs.per_image("infer", size) + 2.0


def candidate_sizes(largest: int, *, step: int = 16) -> list[int]:
    """`largest` and smaller multiples of `step` down to MIN_SIZE (or `largest` itself, if smaller)."""
    sizes = list(range(largest, min(MIN_SIZE, largest) - 1, -step))
    return sizes or [largest]


def _quality(size: int, freeze_epochs: int, epochs: int) -> float:
    """A rough order of expected accuracy: epochs count most (and a frozen one half), then size."""
    return math.log2(1 + epochs + 0.5 * freeze_epochs) + 0.75 * math.log2(size / MIN_SIZE)


def plan_budget(
    costs: Costs,
    workload: Workload,
    *,
    seconds: float,
    largest_size: int,
    freeze_epochs: int,
    most_epochs: int,
) -> Plan:
    """The most accurate recipe expected to finish in `seconds` (with SAFETY's margin), or the fastest there is.

    Sizes run from `largest_size` down, epochs from `most_epochs` down, with or without the frozen
    ones: a budget larger than the default recipe needs buys more epochs or pixels, a smaller one fewer.
    """
    fits, allowed = [], seconds * SAFETY
    sizes = candidate_sizes(largest_size)
    for size in sizes:
        for frozen in sorted({freeze_epochs, 0}):
            for e in range(max(most_epochs, 1), 0, -1):
                time_s = estimate(costs, workload, method="finetune", size=size, freeze_epochs=frozen, epochs=e)
                if time_s <= allowed:
                    fits.append((_quality(size, frozen, e), Plan("finetune", size, frozen, e, time_s)))
    if fits:
        return max(fits, key=lambda f: (f[0], -f[1].seconds))[1]
    for size in sizes:
        time_s = estimate(costs, workload, method="features", size=size, freeze_epochs=0, epochs=0)
        if time_s <= allowed or size == sizes[-1]:
            return Plan("features", size, 0, 0, time_s)
    raise AssertionError("unreachable")  # candidate_sizes is never empty


# ------------------------------------------------------------------------------------- measuring
def measure(
    model: torch.nn.Module,
    sizes: Sequence[int],
    *,
    batch: int = 16,
    files: Sequence[Path] = (),
    clock: Clock = time.perf_counter,
    step: Callable[[torch.nn.Module, str, int, int], None] | None = None,
    kinds: Sequence[str] = ("train", "frozen", "infer"),
    channels_last: bool = True,
) -> Costs:
    """Time one warm-up and the better of two steps of each kind at each of `sizes` on a copy of `model`.

    Training steps run in the run's own `batch`, inference steps in the evaluation loaders' batch
    at each size (`system.evaluation_batch_size`): on a CPU the seconds per image at batch 16 and 64 differ
    by up to 1.4x, and timing another batch than the run's left the estimate 20% short.
    `step(model, kind, size, batch)` runs one step (the real one by default; tests pass a fake
    that advances a fake `clock`). With one size the per-pixel cost is taken as all of it. The
    copy is in the memory layout training uses (`channels_last`: up to 2.5x apart on a CPU).
    """
    step = step or functools.partial(_step, channels_last=channels_last)
    device, threads = ("cuda" if torch.cuda.is_available() else "cpu"), torch.get_num_threads()
    trial = copy.deepcopy(model).to(device)
    if channels_last:
        trial = trial.to(memory_format=torch.channels_last)
    per_kind: dict[str, list[tuple[int, float]]] = {kind: [] for kind in kinds}
    for size in sorted(sizes, reverse=True):  # the run's own size first: it must work
        try:
            for kind, points in per_kind.items():
                n = evaluation_batch_size(device, (size, size), batch, threads) if kind == "infer" else batch
                step(trial, kind, size, n)  # warm-up: allocations, kernel choices
                points.append((size * size, min(_timed(step, trial, kind, size, n, clock) for _ in range(2))))
        except (RuntimeError, ValueError, AssertionError) as exc:  # a backbone fixed to its own input size
            if not per_kind["infer"]:
                raise
            log.debug("can't time %d px (%s); the estimate scales from %d px", size, exc, max(sizes))
            per_kind = {kind: points[:1] for kind, points in per_kind.items()}
    lines = {kind: _line(sorted(points)) for kind, points in per_kind.items()}
    lines = {"train": lines["infer"], "frozen": lines["infer"], **lines}  # kinds not asked for: not run
    return Costs(**lines, decode=_decode_time(files, clock))


def _timed(step: Callable[..., None], model: torch.nn.Module, kind: str, size: int, batch: int, clock: Clock) -> float:
    """Seconds per image of one step; the better of two is kept (a busy machine only ever slows one down)."""
    started = clock()
    step(model, kind, size, batch)
    return (clock() - started) / batch


def _line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed, per pixel) through two (pixels, seconds) points; through the origin for one."""
    if len(points) == 1 or points[0][0] == points[-1][0]:
        return 0.0, points[-1][1] / points[-1][0]
    (p0, t0), (p1, t1) = points[0], points[-1]
    slope = max((t1 - t0) / (p1 - p0), 0.0)
    return max(t0 - slope * p0, 0.0), slope


def _step(model: torch.nn.Module, kind: str, size: int, batch: int, *, channels_last: bool) -> None:
    device = next(model.parameters()).device
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)  # run's RNG kept
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    model.train(kind != "infer")
    if kind == "train":
        logits = model(images)
        F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device=device)).backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            model(images)
    if device.type == "cuda":
        torch.cuda.synchronize()


def _decode_time(files: Sequence[Path], clock: Clock) -> float:
    """Mean seconds to read and decode one of `files` (0 when none decode)."""
    times = []
    for path in files:
        started = clock()
        try:
            open_image(io.BytesIO(Path(path).read_bytes()))
        except (ImageError, OSError):
            continue
        times.append(clock() - started)
    return sum(times) / len(times) if times else 0.0


# ----------------------------------------------------------------------------------------- stopping
class BudgetStop(Callback):
    """Keep training inside the deadline, leaving `reserve_s` for validation, final scoring and the bundle.

    After each epoch, with the real epoch time measured, the phase is resized to the optimizer steps
    that fit (its schedule re-spread to anneal by the new end, the last epoch perhaps partial) or
    ended there. Should an epoch still overrun, it ends at the next batch, is validated and
    checkpointed like any other, and the epoch `finetune.kept_checkpoint` keeps is what `finish` bundles.
    """

    def __init__(self, deadline: float, reserve_s: float, *, clock: Clock = time.perf_counter) -> None:
        self.deadline, self.reserve_s, self.clock = deadline, reserve_s, clock
        self.stopped = False
        self.planned: int | None = None  # the phase's steps as planned, before any resizing

    def before_phase(self, trainer: Any, name: str) -> None:
        self.planned = getattr(trainer.schedule, "total", None)

    def after_epoch(self, trainer: Any, metrics: dict[str, Any]) -> None:
        epoch_s = float(metrics.get("time_s") or 0.0)
        planned = self.planned
        if self.stopped or epoch_s <= 0 or planned is None or trainer.epoch >= trainer.phase_end:
            return
        current = trainer.schedule.total
        step_s = epoch_s / trainer.steps_per_epoch  # validation included, spread over the steps
        more = int((self.deadline - self.clock() - self.reserve_s) / step_s)
        if more <= 0:
            self.stopped = trainer.should_stop = True
            log.warning("time budget: no further step fits; ending training with this epoch")
            return
        steps = min(trainer.step + more, 2 * planned)  # at most twice the plan: the rate would jump too far
        if abs(steps - current) >= max(1, trainer.steps_per_epoch // 4):  # not for every jitter of the clock
            trainer.resize_phase(steps)
            log.warning("time budget: epochs take %.0f s here; the schedule now runs %.1f epochs in all",
                        epoch_s, steps / trainer.steps_per_epoch)  # fmt: skip

    def after_batch(self, trainer: Any, loss: float, batch_size: int) -> None:
        if not self.stopped and self.clock() + self.reserve_s >= self.deadline:
            self.stopped = trainer.should_stop = True
            log.warning("time budget reached: ending training with this epoch (validated and checkpointed)")


# ------------------------------------------------------------------------------------- the pipeline
@dataclass(frozen=True)
class Timing:
    """What planning decided: the plan, the deadline (None without a budget) and the reserve BudgetStop keeps.

    `reserve_s` is one member's (the cut epoch's validation and its `finishing`); `finishing_s` is
    one member's share of the final scoring, which an ensemble runs for all members at the end.
    """

    plan: Plan
    deadline: float | None
    reserve_s: float
    message: str
    finishing_s: float = 0.0

    def member_stop(self, index: int, *, now: float, clock: Clock = time.perf_counter) -> BudgetStop | None:
        """The BudgetStop of member `index` starting `now`: an equal share of the time left, the last one's
        reserve holding every member's final scoring (earlier members leave theirs unused, for it)."""
        if self.deadline is None:
            return None
        left = self.plan.members - index
        reserve = self.reserve_s + (self.plan.members - 1) * self.finishing_s * (left == 1)
        return BudgetStop(now + (self.deadline - now) / left, reserve, clock=clock)


def plan_run(
    config: Any,
    data: Any,
    model: torch.nn.Module,
    *,
    started: float,
    native_size: int,
    fixed_size: bool = False,
    ceiling: int | None = None,
    larger: Sequence[Larger] = (),
    members_free: bool = False,
    clock: Clock = time.perf_counter,
) -> tuple[Any, Timing]:
    """The config to run (its recipe chosen to fit `config.train.budget`, when set) and what was planned.

    Without a budget the config is unchanged; the estimate is still made, and a long one warned about.
    Under a budget the input size ranges up to twice the default (at most the backbone's `native_size`
    and the images' `ceiling`, see `audit.largest_useful_size`) unless the user gave it
    (`fixed_size`), and the epochs up to 16. When the plan reaches SATURATED epochs, the `larger`
    backbones (largest first; the pipeline offers them only when the user left the backbone to us)
    are timed and the first whose own plan reaches SATURATED epochs replaces the run's. Then, with
    `members_free` (the user gave no --members), the most members up to MOST_MEMBERS whose equal
    shares each still reach SATURATED epochs; with `config.finetune.members` given, every plan is
    one member's share.
    """
    ft, size = config.finetune, int(config.model.image_size)
    workload = Workload(len(data.split("train")), len(data.split("valid")), len(data.split("test")))
    workload = Workload(workload.train, workload.valid, workload.test, workload.train + workload.valid)
    files = [s.path for s in data.split("train")[:4]]

    def largest_for(native: int) -> int:  # a bigger budget may buy pixels, up to where they help
        return size if fixed_size else max(size, min(2 * size, native, ceiling or native))

    largest = largest_for(native_size)
    method = config.train.method
    layout = method == "features" or bool(ft.channels_last)  # features extract channels-last too
    budget = parse_duration(config.train.budget) if config.train.budget is not None else None
    freeze = ft.freeze_epochs if method == "finetune" else 0
    kinds = ("infer",) if method == "features" else ("train", "infer", *(("frozen",) if freeze else ()))
    batch = max(1, min(int(ft.batch_size), workload.train))
    if budget is None or method == "features":  # an estimate of the recipe as it stands: one size, what it runs
        costs = measure(model, [size], batch=batch, files=files, clock=clock, kinds=kinds, channels_last=layout)
    else:
        costs = measure(model, sorted({candidate_sizes(size)[-1], largest}), batch=batch, files=files, clock=clock,
                        kinds=kinds, channels_last=layout)  # fmt: skip
    epochs = ft.epochs + (ft.freeze_epochs if method == "scratch" else 0)
    given = 1 if method == "features" else max(int(ft.members or 1), 1)
    one = estimate(costs, workload, method=method, size=size, freeze_epochs=freeze, epochs=epochs)
    default = Plan(method, size, freeze, epochs, given * one, members=given)
    plan = default
    if budget is not None and method != "features":
        deadline, most = started + budget, max(epochs, 16)

        def fit(of: Costs, top: int, share: int = given) -> Plan:  # what fits `share` members in the time left now
            each = plan_budget(of, workload, seconds=(deadline - clock()) / share, largest_size=top,
                               freeze_epochs=freeze, most_epochs=most)  # fmt: skip
            if each.method == "features" and share > 1:  # no member can fine-tune: one model, or features
                if share == given:
                    log.warning("the budget fits no fine-tuning of %d members; planning one model", share)
                return fit(of, top, 1)
            return dataclasses.replace(each, seconds=each.seconds * share, members=share)

        def timed(candidate: torch.nn.Module, at: Sequence[int]) -> Costs:
            return measure(candidate, at, batch=batch, clock=clock, kinds=kinds, channels_last=layout)

        plan, top = fit(costs, largest), largest
        if method == "finetune" and larger and plan.method == "finetune":
            plan, costs, top = _larger_backbone(plan, costs, larger, fit=fit, timed=timed, largest=largest,
                                                 largest_for=largest_for)  # fmt: skip
        if method == "finetune" and members_free and plan.saturated:
            plan = _members(plan, lambda share: fit(costs, top, share))
        if plan.method == "finetune" and method == "scratch":
            plan = dataclasses.replace(plan, method="scratch", freeze_epochs=0, epochs=plan.epochs + plan.freeze_epochs)
    # what must still run once training stops: the cut epoch's validation, then finishing
    final = finishing(costs, workload, plan.image_size)
    reserve = workload.valid * costs.per_image("infer", plan.image_size) + final
    if budget is None:
        return config, Timing(plan, None, reserve, _message(plan, default, budget), final)
    return _planned(config, plan), Timing(plan, started + budget, reserve, _message(plan, default, budget), final)


def _members(plan: Plan, fit: Callable[[int], Plan]) -> Plan:
    """The plan of the most members (MOST_MEMBERS down to 2) whose shares each still reach SATURATED
    epochs; `plan` itself (one member) when even two would not."""
    for share in range(MOST_MEMBERS, 1, -1):
        split = fit(share)
        if split.members == share and split.saturated:
            return dataclasses.replace(split, backbone=plan.backbone)
        log.debug("budget: %d members would get %s each; fewer", share, split.describe())
    return plan


def _larger_backbone(
    plan: Plan,
    costs: Costs,
    larger: Sequence[Larger],
    *,
    fit: Callable[[Costs, int], Plan],
    timed: Callable[[torch.nn.Module, Sequence[int]], Costs],
    largest: int,
    largest_for: Callable[[int], int],
) -> tuple[Plan, Costs, int]:
    """The plan of the largest of `larger` that still reaches SATURATED epochs, its costs and largest
    size; else the run's own backbone, re-planned for the time the timing took.

    Each is timed at the planned size and the run's cost lines scaled to it (`Costs.scaled_to`): a few
    steps, enough to turn down one that can't reach SATURATED epochs. The one that can is also timed
    at the smallest candidate size, for its own line: the scaled one assumes both networks spend the
    same share of their time regardless of pixels, and on the demo Lite2's plan at 64 px came out 35%
    short of the real epochs (bench/RESULTS.md), so members planned for 13 epochs each were cut to 9-10.
    """
    if not plan.saturated:
        return plan, costs, largest  # the run's backbone is still gaining from more epochs: nothing is timed
    for candidate in larger:
        with torch.random.fork_rng(devices=[]):  # its new head draws no random numbers of the run's
            model = candidate.build()
        theirs = costs.scaled_to(timed(model, [plan.image_size]), plan.image_size)
        top = largest_for(candidate.native_size)
        own = fit(theirs, top)
        smallest = candidate_sizes(plan.image_size)[-1]
        if own.saturated and smallest < plan.image_size:  # a candidate worth it: its own line, from a second size
            theirs = theirs.through(timed(model, [smallest]), smallest, plan.image_size)
            own = fit(theirs, top)
        del model
        if own.saturated:
            return dataclasses.replace(own, backbone=candidate.name), theirs, top
        log.debug("budget: %s would get %s; keeping the run's backbone", candidate.name, own.describe())
    return fit(costs, largest), costs, largest


def _planned(config: Any, plan: Plan) -> Any:
    if plan.backbone is not None:
        config = config.replace("model", backbone=plan.backbone)
    config = config.replace("model", image_size=plan.image_size)
    if plan.method == "features":  # one model: frozen features have no members
        return config.replace("finetune", members=None).replace("train", method="features")
    return config.replace("finetune", freeze_epochs=plan.freeze_epochs, epochs=plan.epochs, members=plan.members)


def _message(plan: Plan, default: Plan, budget: float | None) -> str:
    finish = time.strftime("%H:%M", time.localtime(time.time() + plan.seconds))
    text = f"plan: {plan.describe()}, about {minutes(plan.seconds)} on this machine (done ~{finish})"
    if budget is not None:
        why = f"; a larger backbone, as the budget fits {SATURATED}+ of its epochs" if plan.backbone else ""
        if plan.members > 1:
            why += (f"; {plan.members} members averaged, as each still gets {SATURATED}+ epochs"
                    f" (a prediction costs {plan.members} forward passes)")  # fmt: skip
        return f"budget {minutes(budget)}: {text}{why}"
    if default.seconds > LONG_S:
        log.warning(
            "the default recipe will take ~%s on this machine; --budget 10m or --method features for a faster model",
            minutes(default.seconds),
        )
    return text
