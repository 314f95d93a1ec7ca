"""`train(config)`: one pipeline for every method, prepare -> fit -> finish.

- prepare: the run folder (claimed under its lock), the data and its split, the resolved config
  (input size, monitor, recipe defaults), the model, and the run files that say what is running;
- fit: `ensemble.fit_members` (the Trainer's loop, once or for each of an ensemble's members;
  methods finetune and scratch) or
  `features.fit.fit_features` (cached frozen features and classical heads). Each returns a `Fitted`:
  the classifier to bundle and a way to get its logits on a split;
- finish, shared: logits on valid (and test), calibration, the same metric set for every method,
  the bundle and results.json.

Under several processes (torchrun, accelerate launch) every rank runs the pipeline and only the
main one writes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from visiontune.bundle import BundleMeta, save_bundle
from visiontune.calibration import calibrate
from visiontune.config import Monitor, RunConfig, auto_augment, get_monitor
from visiontune.data.audit import largest_useful_size, suggest_image_size
from visiontune.data.dataset import LabelledImages, load_data
from visiontune.errors import ConfigError, Interrupted
from visiontune.evaluation.metrics import auto_monitor, imbalance_ratio, split_metrics
from visiontune.features.classical import DEFAULT_HEADS
from visiontune.features.fit import fit_features
from visiontune.inference import resolve_precision
from visiontune.models import create_classifier, get_backbone
from visiontune.runs.folder import RunFolder
from visiontune.system import hardware, library_versions
from visiontune.training.budget import LARGER, SATURATED, Larger, Timing, plan_run
from visiontune.training.checkpoint import CheckpointError
from visiontune.training.ensemble import fit_members
from visiontune.training.events import Callback
from visiontune.training.fitting import Fitted, Hooks, Prepared
from visiontune.training.novelty import add_detector
from visiontune.training.trackers import Tracking
from visiontune.training.trainer import make_accelerator

VERSIONS = ("visiontune", "torch", "torchvision", "timm", "accelerate", "numpy", "pillow", "scikit-learn")

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where the run is, how it did, and what ran: the resolved config and the monitor that chose.

    Features runs also say which head was kept (`best_head`), every head's scores (`heads`, the
    rows of heads.csv) and what extraction did (`extraction`).
    """

    run_dir: Path
    bundle_dir: Path
    metrics: dict[str, Any]
    best_epoch: int | None
    elapsed_s: float
    config: RunConfig
    monitor: Monitor
    best_head: str | None = None
    heads: list[dict[str, Any]] = field(default_factory=list)
    extraction: dict[str, Any] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)  # an ensemble's: seed, kept epoch, valid score


def train(
    config: RunConfig,
    *,
    callbacks: Sequence[Callback] = (),
    resume: str | Path | None = None,
    label_func: Callable[[Path], object] | None = None,
    overwrite: bool = False,
    hooks: Hooks | None = None,
    started: float | None = None,
) -> TrainResult:
    """Train a classifier as `config` says and write its run folder and bundle.

    `started` (a `time.perf_counter()` reading, default now) is when the command began: a
    `--budget` counts from there, so the time spent importing torch is inside it.

    A folder that already holds a run is refused unless `overwrite` (which replaces it, when it is
    provably a run) or `resume` (fine-tuning runs only: features runs are as fast to start again).

    Example:
        >>> result = train(RunConfig(DataConfig(source="photos")))  # doctest: +SKIP
        >>> result.metrics["valid_accuracy"], result.monitor.name, result.bundle_dir  # doctest: +SKIP
    """
    started = time.perf_counter() if started is None else started
    hooks = hooks or Hooks()
    hooks = dataclasses.replace(hooks, callbacks=[*hooks.callbacks, *callbacks])
    features = config.train.method == "features"
    if features and resume is not None:
        raise ConfigError("--method features runs don't resume: run the same command again (features are cached)")
    finetune = config.finetune
    accelerator = make_accelerator(config.train.precision, compile=finetune.compile and not features)
    if features and accelerator.num_processes > 1:
        raise ConfigError("--method features runs in one process; start it without torchrun / accelerate launch")
    tracking = Tracking(config, main=accelerator.is_main_process)  # a --log whose library is missing: refused here
    run = _run_folder(config, accelerator, resume, overwrite=overwrite)
    with run.lock(enabled=accelerator.is_main_process):
        if accelerator.is_main_process and resume is None:
            run.claim(overwrite=overwrite)
        accelerator.wait_for_everyone()
        try:
            prepared = prepare(
                config, run, accelerator, resume=resume is not None, label_func=label_func, started=started
            )
            features, hooks = _with_timing(prepared, hooks)
            with tracking.started(prepared):
                hooks = tracking.hooks(hooks)
                fitted = fit_features(prepared, hooks) if features else fit_members(prepared, hooks)
                result = finish(prepared, fitted, started)
                tracking.finish(prepared, fitted, result)
            return result
        except KeyboardInterrupt as exc:
            raise Interrupted(_stopped(run, features=features)) from exc


def _with_timing(p: Prepared, hooks: Hooks) -> tuple[bool, Hooks]:
    """Whether the (possibly planned) method is features; the plan recorded and shown. (The fine-tune
    fitter adds the budget's stop, one per ensemble member: `budget.Timing.member_stop`.)"""
    timing = p.timing
    if timing is not None and p.is_main:
        p.run.update_info({"plan": {**dataclasses.asdict(timing.plan), "budget": p.config.train.budget}})
        if hooks.on_plan is not None:
            hooks.on_plan(timing.message)
    return p.config.train.method == "features", hooks


def _stopped(run: RunFolder, *, features: bool) -> str:
    """What Ctrl-C left behind, and the command that continues from there."""
    if features:
        return f"stopped; {run.path} is incomplete: run the same command with --overwrite (features are cached)"
    if not run.checkpoint("last").is_file():
        return f"stopped before the first epoch ended: nothing to resume; start again with --out {run.path} --overwrite"
    return f"stopped; the last finished epoch is kept: continue with visiontune train --resume {run.path}"


def resume_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run folder was started with; refused when there is nothing to resume."""
    run = RunFolder(run_dir)
    if not run.file("config.yaml").is_file():
        raise CheckpointError(f"{run_dir}: no config.yaml; --resume needs a folder made by `visiontune train`")
    if not run.checkpoint("last").is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint yet (it stopped before its first epoch ended); start it again")
    return run.config()


# ---------------------------------------------------------------------------------------- prepare
def prepare(
    config: RunConfig,
    run: RunFolder,
    accelerator: Accelerator,
    *,
    resume: bool,
    label_func: Callable[[Path], object] | None = None,
    started: float | None = None,
) -> Prepared:
    """Data, resolved config, monitor and model; the run files written (not on resume: they stand)."""
    with accelerator.main_process_first():  # the main process fills the file-info cache for the others
        data = load_data(config.data.source, config.data, label_func=label_func)
    if "valid" not in data.splits:
        raise ConfigError(f"{data.root}: training scores its models on a validation split; give --valid-pct above 0")
    ratio = imbalance_ratio(list(Counter(s.label for s in data.split("train")).values()))
    given_size, given_augment, given_backbone = config.model.image_size, config.train.augment, config.model.backbone
    given_members = config.finetune.members
    config = resolve(config, data, ratio)
    set_seed(config.train.seed)  # the head's (or a scratch model's) initial weights
    model = create_classifier(config.model.backbone, len(data.classes), **_model_kwargs(config))
    timing = None
    if not resume and accelerator.num_processes == 1:  # measured on this machine: one process decides
        config, timing, model = _timed_plan(config, data, ratio, model, started, fixed_size=given_size is not None,
                                            backbone_free=given_backbone is None, members_free=given_members is None,
                                            augment_follows_plan=given_augment == "auto")  # fmt: skip
    prepared = Prepared(config, data, run, accelerator, get_monitor(config.train.monitor), ratio, model, resume)
    prepared.timing = timing
    prepared.new_model = functools.partial(
        create_classifier, config.model.backbone, len(data.classes), **_model_kwargs(config)
    )
    if started is not None:
        prepared.started = started
    if prepared.is_main and not resume:
        _write_run_files(prepared)
    return prepared


def _timed_plan(
    config: RunConfig,
    data: LabelledImages,
    ratio: float,
    model: Any,
    started: float | None,
    *,
    fixed_size: bool,
    backbone_free: bool = False,
    members_free: bool = False,
    augment_follows_plan: bool = False,
) -> tuple[RunConfig, Timing, Any]:
    """The estimate, and under --budget the recipe that fits (its model rebuilt when the size or backbone
    changed).

    With `augment: auto` the augmentation follows the planned epochs (`config.auto_augment`); with
    `backbone_free` (no backbone given) a long budget may buy a larger one (`budget.LARGER`), and with
    `members_free` (no --members given) an ensemble.
    """
    native = get_backbone(config.model.backbone).default_size
    began = time.perf_counter() if started is None else started
    ceiling = largest_useful_size(_train_sides(data))
    grows = backbone_free and _may_grow(config)
    larger = _larger_backbones(config, len(data.classes)) if grows else []
    planned, timing = plan_run(config, data, model, started=began, native_size=native, fixed_size=fixed_size,
                               ceiling=ceiling, larger=larger, members_free=members_free)  # fmt: skip
    if grows and not larger and timing.deadline is not None and timing.plan.saturated:
        log.warning("the budget fits %d+ epochs, past what %s gains from; pip install 'visiontune[lite]' "
                    "lets it train EfficientNet-Lite2 instead", SATURATED, config.model.backbone)  # fmt: skip
    if planned.train.method != config.train.method:
        planned = resolve(planned, data, ratio)
    if augment_follows_plan and planned.train.method == "finetune":
        epochs = planned.finetune.epochs + planned.finetune.freeze_epochs
        planned = planned.replace("train", augment=auto_augment("finetune", epochs))
    if (planned.model.image_size, planned.model.backbone) != (config.model.image_size, config.model.backbone):
        set_seed(planned.train.seed)
        model = create_classifier(planned.model.backbone, len(data.classes), **_model_kwargs(planned))
    return planned, timing, model


def _may_grow(config: RunConfig) -> bool:
    """Whether a larger pretrained backbone can replace this run's: fine-tuning from packaged weights."""
    return config.train.method == "finetune" and config.model.pretrained and config.model.weights is None


def _larger_backbones(config: RunConfig, classes: int) -> list[Larger]:
    """The larger backbones a long --budget may buy (budget.LARGER): those whose ImageNet weights are
    installed (no download mid-plan)."""
    found = []
    for name in LARGER:
        spec = get_backbone(name)
        if spec.offline_weights is not None and spec.offline_weights.installed():
            build = functools.partial(create_classifier, name, classes, **_model_kwargs(config))
            found.append(Larger(name, spec.default_size, build))
    return found


def resolve(config: RunConfig, data: LabelledImages, imbalance: float) -> RunConfig:
    """Fill in what was left to the data, so config.yaml says what really ran.

    - the input size: for fine-tuning, what the audit suggests for these images (small images
      upsampled about 3x) at most the backbone's own size, so 28 px Fashion-MNIST trains at 96 px
      and photos at 224; for frozen features, the backbone's own size (ImageNet features are best at
      the scale they were learnt at: 0.852 test accuracy at 112 px, 0.882 at 224 on the demo);
    - the monitor: accuracy, or balanced accuracy when the largest class is over 1.5x the smallest;
    - the augmentation: "auto" is none for fine-tuning up to 8 epochs, flips beyond, `standard`
      otherwise (`config.auto_augment`);
    - features: the default heads; fine-tuning: a randomly initialised backbone has no BatchNorm
      statistics worth freezing, and the `strong` recipe adds MixUp/CutMix and an EMA unless set.
    """
    features = config.train.method == "features"
    if not features and config.finetune.members is None:
        config = config.replace("finetune", members=1)
    if config.model.backbone is None:
        config = config.replace("model", backbone=config.model.chosen_backbone)
    if config.model.image_size is None:
        default = get_backbone(config.model.backbone).default_size
        size = default if features else min(suggest_image_size(_train_sides(data))[0], default)
        config = config.replace("model", image_size=size)
    if config.train.monitor == "auto":
        config = config.replace("train", monitor=auto_monitor(imbalance).name)
    if config.train.augment == "auto":
        epochs = config.finetune.epochs + config.finetune.freeze_epochs
        config = config.replace("train", augment=auto_augment(config.train.method, epochs))
    if features:
        if not config.features.heads:
            config = config.replace("features", heads=DEFAULT_HEADS)
        if config.features.views > 1 and not config.train.augment_config().enabled:
            raise ConfigError(
                "--views N makes augmented copies of each training image; it needs --augment other than none"
            )
        return config
    finetune = config.finetune
    if not config.model.pretrained and config.model.weights is None and finetune.bn_stats == "frozen":
        finetune = dataclasses.replace(finetune, bn_stats="adapt")
    if config.train.augment == "strong":
        if finetune.mixup == 0 and finetune.cutmix == 0:
            finetune = dataclasses.replace(finetune, mixup=0.2, cutmix=1.0)
        if finetune.ema is None:
            finetune = dataclasses.replace(finetune, ema=0.999)
    return dataclasses.replace(config, finetune=finetune)


def _train_sides(data: LabelledImages) -> list[int]:
    return [min(i.width, i.height) for s in data.split("train") if (i := data.infos[s.path]).width and i.height]


def _model_kwargs(config: RunConfig) -> dict[str, Any]:
    m = config.model
    return {
        "pretrained": m.pretrained and config.train.method != "scratch",
        "weights": m.weights,
        "drop_rate": m.drop_rate,
        "pool": m.pool,
        "image_size": m.image_size,
        "resize_mode": m.resize_mode,
    }


def _run_folder(
    config: RunConfig, accelerator: Accelerator, resume: str | Path | None, *, overwrite: bool
) -> RunFolder:
    """runs/<date>-<data>-<backbone> unless --out says otherwise; the same path on every rank."""
    if resume is not None:
        path = Path(resume)
    elif config.out:
        path = Path(config.out)
    else:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(config.data.source).stem or "data")
        budget_chooses = config.train.budget and config.model.backbone is None
        model = "auto" if budget_chooses else config.model.chosen_backbone
        path = Path("runs") / (config.name or f"{datetime.now():%Y%m%d-%H%M%S}-{stem}-{model}")
    holder = [str(path)]
    if accelerator.num_processes > 1:
        broadcast_object_list(holder)
    run = RunFolder(holder[0])
    if accelerator.is_main_process:  # refused before the folder or its lock file is created
        run.check_target(overwrite=None if resume is not None else overwrite)
    return run


def _write_run_files(p: Prepared) -> None:
    """config.yaml, classes.json, splits.csv and run.json: what is running, before the first epoch."""
    p.run.write_config(p.config)
    p.run.write_classes(p.data.classes)
    p.run.write_splits([(str(s.path), s.label, s.split) for s in p.data.samples])
    p.run.write_info(
        {
            "started": datetime.now().isoformat(timespec="seconds"),
            "method": p.config.train.method,
            "data_root": str(p.data.root),
            "data_manifest_sha256": p.data.manifest_hash(),
            "counts": p.data.counts(),
            "imbalance_ratio": p.imbalance,
            "monitor": p.monitor.name,
            "monitor_mode": p.monitor.mode,
            "precision": resolve_precision(p.config.train.precision),
            "processes": p.accelerator.num_processes,
            "parameters": p.model.parameter_summary(),
            "versions": library_versions(VERSIONS),
            "hardware": hardware(),
            "corrections": p.data.corrections.to_dict() if p.data.corrections else None,
        }
    )


# ----------------------------------------------------------------------------------------- finish
def finish(p: Prepared, fitted: Fitted, started: float) -> TrainResult:
    """Score valid (and test) with the kept model, calibrate on valid, write the bundle and results.json."""
    logits, targets = fitted.logits("valid")
    calibration = add_detector(p, fitted, calibrate(logits, targets))
    elapsed = fitted.elapsed_before + time.perf_counter() - started  # every session of a resumed run
    classes = len(p.data.classes)
    metrics = split_metrics("valid", logits, targets, classes, calibration.temperature)
    if "test" in p.data.splits:
        metrics.update(split_metrics("test", *fitted.logits("test"), classes, calibration.temperature))
    kept = {"best_epoch": fitted.best_epoch} if fitted.best_head is None else {"head": fitted.best_head}
    if p.is_main:
        meta = BundleMeta(
            arch=fitted.model.arch,
            classes=list(p.data.classes),
            preprocessing=fitted.model.preprocessing,
            metrics={**metrics, **kept, "monitor": p.monitor.name},
            calibration=calibration,
            training=_bundle_training(p, fitted),
            versions=library_versions(VERSIONS),
        )
        with fitted.weights():
            save_bundle(p.run.bundle_dir, fitted.model, meta)
        p.run.write_results(
            {"metrics": metrics, "monitor": p.monitor.name, "best_epoch": fitted.best_epoch, **fitted.results,
             "calibration": calibration.to_dict(), "elapsed_s": elapsed}
        )  # fmt: skip
    p.accelerator.wait_for_everyone()
    return TrainResult(
        p.run.path,
        p.run.bundle_dir,
        metrics,
        fitted.best_epoch,
        fitted.elapsed_before + time.perf_counter() - started,
        p.config,
        p.monitor,
        best_head=fitted.best_head,
        heads=fitted.results.get("heads", []),
        extraction=fitted.results.get("extraction", {}),
        members=fitted.results.get("members", []),
    )


def _bundle_training(p: Prepared, fitted: Fitted) -> dict[str, Any]:
    return {
        "method": p.config.train.method,
        "config": p.config.to_dict(),
        "data_root": str(p.data.root),
        "data_manifest_sha256": p.data.manifest_hash(),
        "run_dir": str(p.run.path),
        **fitted.bundle_training,
    }
