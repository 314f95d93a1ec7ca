"""--budget: measured costs, the plan that fits (with a fake clock: no real timing), the clean stop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import write_class_folders
from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig, parse_duration
from visiontune.data.dataset import load_data
from visiontune.errors import ConfigError
from visiontune.models import create_classifier
from visiontune.system import inference_batch_size
from visiontune.training.budget import (
    MOST_MEMBERS,
    SAFETY,
    SATURATED,
    BudgetStop,
    Costs,
    Larger,
    Workload,
    candidate_sizes,
    estimate,
    measure,
    plan_budget,
    plan_run,
)
from visiontune.training.pipeline import train
from visiontune.training.schedule import OneCycle
from visiontune.training.trainer import Trainer

DEMO = Workload(train=3200, valid=800, test=0, decode=4000)  # the bundled Fashion-MNIST subset's split


class FakeClock:
    """A clock that only moves when a fake step says how long it took: seconds per image = a + b * pixels."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cost = {"train": (2e-3, 1.6e-6), "frozen": (1e-3, 0.5e-6), "infer": (1e-3, 0.4e-6)}

    def __call__(self) -> float:
        return self.now

    def step(self, model: torch.nn.Module, kind: str, size: int, batch: int) -> None:
        fixed, per_pixel = self.cost[kind]
        self.now += batch * (fixed + per_pixel * size * size) * getattr(model, "slowness", 1.0)
        self.now += batch * getattr(model, "overhead", 0.0)  # a network's own cost per image whatever its size


@pytest.fixture
def costs() -> Costs:
    clock = FakeClock()
    measured = measure(torch.nn.Linear(2, 2), [64, 112], clock=clock, step=clock.step)
    return Costs(measured.train, measured.frozen, measured.infer, decode=2e-4)


def test_measured_costs_recover_the_machine_speed(costs: Costs) -> None:
    clock = FakeClock()
    for kind, (fixed, per_pixel) in clock.cost.items():
        assert getattr(costs, kind) == pytest.approx((fixed, per_pixel), rel=1e-6)
    # the default demo recipe at 112 px, by hand: decode 4000 x 0.2 ms = 0.8 s; frozen epoch 3200 x 7.27 ms
    # + validation 800 x 6.02 ms = 28.1 s; 6 x (3200 x 22.07 ms + 4.8 s) = 452.6 s; validation's logits and
    # embeddings in one pass and the detector's bank, (800 + 3200) x 6.02 ms = 24.1 s; the bundle 2 s
    seconds = estimate(costs, DEMO, method="finetune", size=112, freeze_epochs=1, epochs=6)
    assert seconds == pytest.approx(0.8 + 28.1 + 452.6 + 24.1 + 2.0, abs=0.2)


def test_steps_are_timed_in_the_batches_the_run_uses() -> None:
    clock, seen = FakeClock(), []

    def step(model: torch.nn.Module, kind: str, size: int, batch: int) -> None:
        seen.append((kind, size, batch))
        clock.step(model, kind, size, batch)

    measure(torch.nn.Linear(2, 2), [64, 160], batch=48, clock=clock, step=step)
    threads = torch.get_num_threads()
    for kind, size, batch in seen:  # training's own batch; evaluation's, which shrinks as images grow on a CPU
        expected = inference_batch_size("cpu", (size, size), threads) if kind == "infer" else 48
        assert batch == expected, (kind, size)
    assert {kind for kind, _, _ in seen} == {"train", "frozen", "infer"} and len(seen) == 3 * 2 * 3


def test_the_plan_times_training_at_the_configured_batch(tmp_path: Path, fashion: dict, monkeypatch) -> None:
    data = load_data(write_class_folders(tmp_path / "data", fashion, per_class=12), DataConfig(valid_pct=0.25))
    config = RunConfig(
        DataConfig(source=str(data.root), valid_pct=0.25),
        ModelConfig(backbone="small_cnn", image_size=32),
        TrainConfig(),
        FinetuneConfig(epochs=2, freeze_epochs=0, batch_size=8),
    )
    model = create_classifier("small_cnn", len(data.classes), pretrained=False, image_size=32)
    clock, seen = FakeClock(), []

    def spy(*args, **kwargs):  # the real measure, on the fake clock, recording what plan_run asks for
        seen.append(kwargs)
        return measure(*args, **{**kwargs, "step": clock.step})

    monkeypatch.setattr("visiontune.training.budget.measure", spy)
    plan_run(config, data, model, started=clock(), native_size=224, clock=clock)
    assert seen[0]["batch"] == 8 and set(seen[0]["kinds"]) == {"train", "infer"}  # no frozen epoch: not timed


def test_the_plan_fits_the_budget_and_grows_with_it(costs: Costs) -> None:
    plans = [
        plan_budget(costs, DEMO, seconds=m * 60, largest_size=112, freeze_epochs=1, most_epochs=6) for m in (2, 5, 10)
    ]
    for minutes, plan in zip((2, 5, 10), plans, strict=True):
        assert plan.method == "finetune" and plan.seconds <= SAFETY * minutes * 60
        assert plan.seconds == estimate(costs, DEMO, method="finetune", size=plan.image_size,
                                        freeze_epochs=plan.freeze_epochs, epochs=plan.epochs)  # fmt: skip
    sizes = [p.image_size for p in plans]
    epochs = [p.epochs + p.freeze_epochs for p in plans]
    assert sizes == sorted(sizes) and epochs == sorted(epochs) and (sizes[0], epochs[0]) < (sizes[2], epochs[2])
    assert (plans[2].image_size, plans[2].freeze_epochs, plans[2].epochs) == (112, 1, 6)  # the default fits 10 min
    assert plans[0].image_size == 64 and plans[0].epochs + plans[0].freeze_epochs >= 2  # 2 min: smaller, fewer


def test_a_budget_larger_than_the_default_needs_buys_epochs_and_pixels(costs: Costs) -> None:
    default = estimate(costs, DEMO, method="finetune", size=64, freeze_epochs=0, epochs=3)
    plan = plan_budget(costs, DEMO, seconds=4 * default, largest_size=128, freeze_epochs=0, most_epochs=8)
    assert plan.image_size > 64 and plan.epochs > 3 and plan.seconds <= SAFETY * 4 * default


def test_a_budget_too_small_for_fine_tuning_plans_frozen_features(costs: Costs) -> None:
    plan = plan_budget(costs, DEMO, seconds=30, largest_size=112, freeze_epochs=1, most_epochs=6)
    assert plan.method == "features" and plan.seconds <= 27
    assert candidate_sizes(224) == list(range(224, 63, -16)) and candidate_sizes(28) == [28]


def test_budget_stop_ends_training_when_the_reserve_would_be_eaten() -> None:
    clock = FakeClock()
    stop = BudgetStop(deadline=100.0, reserve_s=10.0, clock=clock)
    trainer = type("T", (), {"should_stop": False})()
    clock.now = 89.0
    stop.after_batch(trainer, 0.5, 8)
    assert not trainer.should_stop
    clock.now = 90.0
    stop.after_batch(trainer, 0.5, 8)
    assert trainer.should_stop and stop.stopped


def test_budget_stop_resizes_the_phase_to_the_steps_that_fit_once_an_epoch_is_timed() -> None:
    clock = FakeClock()
    stop = BudgetStop(deadline=400.0, reserve_s=20.0, clock=clock)
    sizes: list[int] = []
    schedule = SimpleNamespace(total=80)  # 8 epochs of 10 steps planned

    def resize(steps: int) -> None:
        sizes.append(steps)
        schedule.total = steps

    trainer = SimpleNamespace(should_stop=False, epoch=2, phase_end=8, step=20, steps_per_epoch=10,
                              schedule=schedule, resize_phase=resize)  # fmt: skip
    stop.before_phase(trainer, "unfrozen")
    clock.now = 100.0
    stop.after_epoch(trainer, {"time_s": 46.0})  # 280 s left at 4.6 s a step: 60 more steps, as planned
    assert sizes == [] and not trainer.should_stop
    stop.after_epoch(trainer, {"time_s": 56.0})  # slower: 50 more steps fit, the schedule shrinks to 70
    assert sizes == [70]
    stop.after_epoch(trainer, {"time_s": 28.0})  # faster than planned: 100 more would fit, at most twice the plan
    assert sizes == [70, 120] and not trainer.should_stop
    trainer.step = 30
    stop.after_epoch(trainer, {"time_s": 5.0})  # far faster still: the cap stays twice the *original* plan
    stop.after_epoch(trainer, {"time_s": 5.0})
    assert sizes == [70, 120, 160] and schedule.total == 160
    clock.now = 379.0
    stop.after_epoch(trainer, {"time_s": 50.0})  # 1 s left: not one step fits, stop at this epoch's end
    assert trainer.should_stop and stop.stopped


def test_a_resized_phase_anneals_its_rate_by_the_new_end_and_may_end_mid_epoch() -> None:
    trainer = SimpleNamespace(step=20, phase_start=0, phase_end=8, steps_per_epoch=10, schedule=OneCycle(80, 0.3, 5.0))
    Trainer.resize_phase(trainer, 45)  # type: ignore[arg-type]
    assert (trainer.phase_end, trainer.step_limit, trainer.schedule.total) == (5, 45, 45)  # epoch 5 ends at step 45
    assert trainer.schedule.factor(45) < 1e-5 < 0.5 < OneCycle(80, 0.3, 5.0).factor(45)  # annealed at 45, not 80
    Trainer.resize_phase(trainer, 5)  # type: ignore[arg-type]
    assert trainer.step_limit == 21  # never before the step under way


def test_budget_durations_are_checked_at_the_boundary() -> None:
    assert [parse_duration(t) for t in ("90s", "10m", "1.5h", "45")] == [90, 600, 5400, 45]
    for bad in ("ten minutes", "0m", "-5m", "10d"):
        with pytest.raises(ConfigError, match="budget"):
            TrainConfig(budget=bad)


def test_a_budgeted_run_records_its_plan(tmp_path: Path, fashion: dict) -> None:
    data = write_class_folders(tmp_path / "data", fashion, per_class=6)
    config = RunConfig(
        DataConfig(source=str(data), valid_pct=0.25),
        ModelConfig(backbone="mlp", image_size=28),  # the plan runs 16 epochs and may stretch to 32: the cheapest model
        TrainConfig(method="scratch", num_workers=0, budget="5m"),
        FinetuneConfig(epochs=2, freeze_epochs=0, batch_size=16, lr=3e-3),
        out=str(tmp_path / "run"),
    )
    said: list[str] = []
    from visiontune.training.fitting import Hooks

    result = train(config, hooks=Hooks(on_plan=said.append))
    plan = json.loads((tmp_path / "run" / "run.json").read_text())["plan"]
    assert plan["budget"] == "5m" and plan["method"] == "scratch" and plan["seconds"] > 0
    assert len(said) == 1 and said[0].startswith("budget 5 min: plan: ")
    assert result.config.finetune.epochs == plan["epochs"]
    # a budget far above what the data needs stretches the plan at most twice: seconds (about 10 on 2 cores,
    # 40 on a slow, loaded VM), not the 5 minutes
    assert result.elapsed_s < 150
    epochs_run = len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) - 1
    assert plan["epochs"] <= epochs_run <= 2 * plan["epochs"]  # the stretch's cap, whatever the machine's speed


def test_a_large_budget_buys_pixels_only_up_to_the_images_ceiling(tmp_path: Path, fashion: dict) -> None:
    data = load_data(write_class_folders(tmp_path / "data", fashion, per_class=12), DataConfig(valid_pct=0.25))
    config = RunConfig(
        DataConfig(source=str(data.root), valid_pct=0.25),
        ModelConfig(backbone="small_cnn", image_size=32),
        TrainConfig(budget="10h"),  # far more than 8 epochs at any size need
        FinetuneConfig(epochs=2, freeze_epochs=0, batch_size=16),
    )
    model = create_classifier("small_cnn", len(data.classes), pretrained=False, image_size=32)
    sizes = {}
    for ceiling in (None, 48):
        planned, timing = plan_run(config, data, model, started=time.perf_counter(), native_size=224, ceiling=ceiling)
        sizes[ceiling] = planned.model.image_size
        assert timing.plan.epochs == 16 and planned.finetune.epochs == 16  # the rest of the budget buys epochs
    assert sizes == {None: 64, 48: 48}  # twice the default without a ceiling; the ceiling when it is lower


# ------------------------------------------------------------------- a larger backbone for a long budget
def _slow(model: torch.nn.Module, slowness: float) -> torch.nn.Module:
    model.slowness = slowness  # FakeClock.step charges this multiple of the base costs (copied with the model)
    return model


@pytest.fixture
def long_run(tmp_path: Path, fashion: dict, monkeypatch):
    """plan_run on 36 images with a fake machine: the run's model 10x the base costs; `larger` ones more."""
    data = load_data(write_class_folders(tmp_path / "data", fashion, per_class=12), DataConfig(valid_pct=0.25))
    clock, timed = FakeClock(), []

    def spy(model, sizes, **kwargs):  # the real measure, on the fake clock
        timed.append((getattr(model, "slowness", None), list(sizes)))
        return measure(model, sizes, **{**kwargs, "clock": clock, "step": clock.step})

    monkeypatch.setattr("visiontune.training.budget.measure", spy)
    model = _slow(create_classifier("small_cnn", len(data.classes), pretrained=False, image_size=64), 10.0)

    def run(budget: str, larger: list[Larger], *, members: int | None = None, members_free: bool = False):
        config = RunConfig(
            DataConfig(source=str(data.root), valid_pct=0.25),
            ModelConfig(backbone="small_cnn", image_size=64),
            TrainConfig(budget=budget),
            FinetuneConfig(epochs=4, freeze_epochs=0, batch_size=8, members=members),
        )
        timed.clear()
        return plan_run(config, data, model, started=clock(), native_size=224, larger=larger, clock=clock,
                        members_free=members_free)  # fmt: skip

    return run, timed


def _candidate(name: str, slowness: float, built: list[str]) -> Larger:
    def build() -> torch.nn.Module:
        built.append(name)
        return _slow(torch.nn.Linear(2, 2), slowness)

    return Larger(name, 224, build)


def test_a_budget_past_saturation_buys_the_largest_backbone_that_still_gets_enough_epochs(long_run) -> None:
    run, timed = long_run
    built: list[str] = []
    larger = [_candidate("huge", 300.0, built), _candidate("big", 13.0, built)]  # 30x and 1.3x the run's model
    planned, timing = run("10m", larger)
    plan = timing.plan
    assert built == ["huge", "big"]  # largest first; "huge" would get too few epochs at any size
    planned_size = timed[1][1]
    assert [sizes for _, sizes in timed[1:]] == [planned_size, planned_size, [64]]  # the chosen one at 64 px too
    assert plan.backbone == "big" and plan.epochs >= SATURATED
    assert planned.model.backbone == "big" and planned.finetune.epochs == plan.epochs
    assert plan.seconds <= SAFETY * 600  # it still fits the budget, at its own costs
    assert plan.describe().startswith("big, ") and "a larger backbone" in timing.message


def test_a_larger_backbone_is_planned_on_its_own_costs_not_the_runs_scaled(long_run) -> None:
    """A network whose cost does not shrink with the pixels as the run's does: its plan must still fit."""
    run, _ = long_run

    def heavy() -> torch.nn.Module:
        model = _slow(torch.nn.Linear(2, 2), 13.0)
        model.overhead = 0.05  # seconds per image at any size: 30% of its cost at 64 px, 15% at 112
        return model

    _, timing = run("10m", [Larger("big", 224, heavy)], members_free=True)
    plan, truth = timing.plan, FakeClock()
    truth.cost = {kind: (fixed * 13.0 + 0.05, per_pixel * 13.0) for kind, (fixed, per_pixel) in truth.cost.items()}
    real = measure(torch.nn.Linear(2, 2), [64, 112], clock=truth, step=truth.step)
    workload = Workload(27, 9, 0, 36)
    each = estimate(real, workload, method="finetune", size=plan.image_size, freeze_epochs=0, epochs=plan.epochs)
    assert plan.backbone == "big" and plan.members * each <= SAFETY * 600 * 1.02  # what it will really take fits
    assert plan.seconds == pytest.approx(plan.members * each, rel=0.02)  # and is what the plan expected


def test_a_short_budget_times_no_larger_backbone(long_run) -> None:
    run, timed = long_run
    built: list[str] = []
    planned, timing = run("45s", [_candidate("big", 13.0, built)])
    assert timing.plan.epochs + timing.plan.freeze_epochs < SATURATED  # the run's own model is still gaining
    assert built == [] and len(timed) == 1 and timing.plan.backbone is None
    assert planned.model.backbone == "small_cnn"


def test_when_no_larger_backbone_gets_enough_epochs_the_run_keeps_its_own(long_run) -> None:
    run, _ = long_run
    built: list[str] = []
    planned, timing = run("10m", [_candidate("huge", 300.0, built)])
    assert built == ["huge"] and timing.plan.backbone is None and planned.model.backbone == "small_cnn"
    assert timing.plan.epochs >= SATURATED and timing.plan.seconds <= SAFETY * 600


# ------------------------------------------------------------------------------- an ensemble for a longer one
def test_a_budget_that_saturates_the_largest_backbone_buys_members_that_each_still_saturate(long_run) -> None:
    run, _ = long_run
    members = {}
    for budget in ("90s", "150s", "10m"):
        built: list[str] = []
        planned, timing = run(budget, [_candidate("big", 13.0, built)], members_free=True)
        plan = timing.plan
        members[budget] = plan.members
        assert plan.backbone == "big" and plan.saturated  # the larger backbone first, then members of it
        assert planned.finetune.members == plan.members and planned.model.backbone == "big"
        assert plan.seconds <= SAFETY * parse_duration(budget)  # all members together fit
        if plan.members > 1:
            assert f"{plan.members} members averaged" in timing.message
            assert plan.describe().startswith(f"{plan.members} members, each big, ")
    # on this fake machine 90 s saturate "big" but half of it would not (one model); 150 s buy two, 10 min four
    assert members == {"90s": 1, "150s": 2, "10m": MOST_MEMBERS}


def test_members_are_planned_only_when_left_to_visiontune(long_run) -> None:
    run, _ = long_run
    _, timing = run("10h", [], members=1)  # --members 1 (members_free is False): one model, however long
    assert timing.plan.members == 1 and timing.plan.saturated
    _, timing = run("2m", [], members=1)
    one_model = timing.plan
    _, timing = run("2m", [], members=3)  # --members 3 under a budget: each plan is a third of it
    plan = timing.plan
    assert plan.members == 3 and plan.seconds <= SAFETY * 120
    assert plan.epochs < one_model.epochs  # each member's recipe is planned for its share


def test_members_given_that_could_not_fine_tune_in_their_share_become_one_model(long_run, caplog) -> None:
    run, _ = long_run
    planned, timing = run("30s", [], members=4)  # 7 s each would buy frozen features only, which don't ensemble
    assert "fits no fine-tuning of 4 members" in caplog.text
    assert (timing.plan.method, timing.plan.members, planned.finetune.members) == ("finetune", 1, 1)  # one model
    planned, timing = run("20s", [], members=4)  # not even one model fine-tunes in 20 s: frozen features
    assert timing.plan.method == "features" and planned.train.method == "features"
    assert planned.finetune.members is None  # config.yaml names no members for a features run


def test_each_member_stops_at_its_share_and_the_last_keeps_every_members_final_scoring() -> None:
    from visiontune.training.budget import Plan, Timing

    timing = Timing(Plan("finetune", 64, 0, 12, 90.0, members=2), deadline=100.0, reserve_s=5.0, message="",
                    finishing_s=3.0)  # fmt: skip
    first = timing.member_stop(0, now=10.0)
    assert (first.deadline, first.reserve_s) == (55.0, 5.0)  # half of the 90 s left
    second = timing.member_stop(1, now=53.0)  # the first stopped 2 s early, leaving its scoring for the end
    assert (second.deadline, second.reserve_s) == (100.0, 8.0)  # both members' final scoring held back
    alone = Timing(Plan("finetune", 64, 0, 4, 50.0), deadline=100.0, reserve_s=5.0, message="", finishing_s=3.0)
    stop = alone.member_stop(0, now=10.0)
    assert (stop.deadline, stop.reserve_s) == (100.0, 5.0)  # one model: the budget's deadline and reserve, as before
    assert Timing(Plan("finetune", 64, 0, 4, 50.0), None, 5.0, "").member_stop(0, now=1.0) is None  # no budget


class _Planned(Exception):
    """Raised by a spy in place of planning: what the pipeline offered is all the test needs."""


def test_only_a_backbone_left_to_visiontune_may_be_swapped(tmp_path: Path, fashion: dict, monkeypatch) -> None:
    data = write_class_folders(tmp_path / "data", fashion, per_class=6)
    offered: list[list[str]] = []
    free: list[bool] = []

    def spy(*args, **kwargs):
        offered.append([c.name for c in kwargs["larger"]])
        free.append(kwargs["members_free"])
        raise _Planned

    monkeypatch.setattr("visiontune.training.pipeline.plan_run", spy)
    for name, backbone, method, members in [("free", None, "finetune", None),
                                            ("given", "efficientnet_lite0", "finetune", None),
                                            ("scratch", None, "scratch", 1)]:  # fmt: skip
        config = RunConfig(
            DataConfig(source=str(data), valid_pct=0.25),
            ModelConfig(backbone=backbone, image_size=32),
            TrainConfig(method=method, num_workers=0, budget="10m"),
            FinetuneConfig(members=members),
            out=str(tmp_path / name),
        )
        with pytest.raises(_Planned):
            train(config)
    # the user's --model, even the default spelled out, is kept; a network trained from scratch has no larger
    # pretrained sibling
    assert offered == [["efficientnet_lite2", "efficientnet_lite1"], [], []]
    assert free == [True, True, False]  # members are the budget's to plan unless --members was given


def test_a_planned_backbone_is_the_model_that_trains(tmp_path: Path, fashion: dict, monkeypatch) -> None:
    from visiontune.training import pipeline

    data = load_data(write_class_folders(tmp_path / "data", fashion, per_class=6), DataConfig(valid_pct=0.25))
    config = RunConfig(DataConfig(source=str(data.root), valid_pct=0.25), ModelConfig(image_size=32),
                       TrainConfig(budget="10m"))  # fmt: skip
    config = pipeline.resolve(config, data, 1.0)
    assert config.model.backbone == "efficientnet_lite0"  # resolve fills in the default

    def plans_lite1(config, data, model, **kwargs):
        timing = SimpleNamespace(plan=SimpleNamespace(backbone="efficientnet_lite1"))
        return config.replace("model", backbone="efficientnet_lite1", image_size=48), timing

    monkeypatch.setattr(pipeline, "plan_run", plans_lite1)
    model = create_classifier("efficientnet_lite0", len(data.classes), image_size=32)
    planned, _, built = pipeline._timed_plan(config, data, 1.0, model, None, fixed_size=False, backbone_free=True)
    lite1 = create_classifier("efficientnet_lite1", len(data.classes), image_size=48)
    assert planned.model.backbone == "efficientnet_lite1" and built is not model
    assert [p.shape for p in built.parameters()] == [p.shape for p in lite1.parameters()]


def test_a_saturated_budget_without_the_larger_weights_says_how_to_get_them(
    tmp_path: Path, fashion: dict, monkeypatch, caplog
) -> None:
    from visiontune.training import pipeline

    data = load_data(write_class_folders(tmp_path / "data", fashion, per_class=12), DataConfig(valid_pct=0.25))
    config = RunConfig(DataConfig(source=str(data.root), valid_pct=0.25), ModelConfig(backbone="small_cnn",
                       image_size=32), TrainConfig(budget="10h"))  # fmt: skip
    config = pipeline.resolve(config, data, 1.0)
    clock = FakeClock()
    real = measure
    monkeypatch.setattr(
        "visiontune.training.budget.measure", lambda *a, **k: real(*a, **{**k, "clock": clock, "step": clock.step})
    )
    monkeypatch.setattr(pipeline, "LARGER", ())  # as if visiontune[lite] were not installed
    model = create_classifier("small_cnn", len(data.classes), pretrained=False, image_size=32)
    said = {}
    for free in (True, False):
        caplog.clear()
        _, timing, _ = pipeline._timed_plan(config, data, 1.0, model, None, fixed_size=False, backbone_free=free)
        assert timing.plan.epochs >= SATURATED  # ten hours: the plan saturates
        said[free] = "pip install 'visiontune[lite]'" in caplog.text
    assert said == {True: True, False: False}  # a --model the user gave is theirs: no advice to change it
