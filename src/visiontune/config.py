"""Configuration as frozen dataclasses, one per stage, loadable from and saved to YAML.

Keyword arguments with string choices are checked here, once, at the boundary, so the rest of
the code can trust them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from visiontune.errors import ConfigError

T = TypeVar("T")

RESIZE_MODES = ("squish", "crop", "pad")
AUGMENT_PRESETS = ("none", "light", "standard", "strong")
IMAGE_SIZES = (8, 4096)  # the input sides (pixels) a model may be trained or served at


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """Raise ConfigError in the Keras style when `value` is not one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"`{name}` must be one of {', '.join(map(repr, choices))}. Received: {name}={value!r}")


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    """Raise ConfigError when `value` is outside [low, high] (or (low, high] with low_open); NaN is outside too."""
    bad = value <= low if low_open else value < low
    if bad or value > high or value != value:  # NaN compares false with everything, itself included
        bracket = "(" if low_open else "["
        raise ConfigError(f"`{name}` must be in {bracket}{low}, {high}]. Received: {name}={value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where the images are, how labels and splits are read, and how the split is made.

    `valid_pct` and `seed` only matter when the source has no validation split of its own.
    `group_regex` / `group_col` keep related images (one pet, one patient) on one side of the split.
    """

    source: str = ""
    label_regex: str | None = None
    csv_path_col: str = "path"
    csv_label_col: str = "label"
    csv_split_col: str = "split"
    group_col: str | None = None
    group_regex: str | None = None
    valid_pct: float = 0.2
    test_pct: float = 0.0
    seed: int = 42
    sample: float = 1.0
    near_duplicate_split: bool = True
    near_duplicate_distance: int = 4
    max_pixels: int = 64_000_000
    corrections: str | None = None  # corrections.csv to apply: None finds <root>/corrections.csv, "none" is off

    def __post_init__(self) -> None:
        check_range("valid_pct", self.valid_pct, 0.0, 0.9)
        check_range("test_pct", self.test_pct, 0.0, 0.9)
        check_range("sample", self.sample, 0.0, 1.0, low_open=True)
        check_range("near_duplicate_distance", self.near_duplicate_distance, 0, 16)
        if self.valid_pct + self.test_pct >= 1.0:
            raise ConfigError(f"`valid_pct` + `test_pct` must be below 1. Received: {self.valid_pct} + {self.test_pct}")
        if self.group_col and self.group_regex:
            raise ConfigError("Give either `group_col` (CSV sources) or `group_regex` (file names), not both.")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; built from a preset, every field overridable.

    `scale` is the range of the image area a random crop keeps (the zoom); `rotation` is in degrees
    (the seeds tried up to 90). The field defaults are the `standard` preset: flips and a mild zoom,
    which beat adding rotation, a stronger zoom and colour jitter when fine-tuning on small images
    (bench/RESULTS.md); `strong` adds those and more for long runs.
    """

    hflip: bool = True
    vflip: bool = False
    rotation: float = 0.0
    scale: tuple[float, float] = (0.8, 1.0)
    color_jitter: float = 0.0
    trivial_augment: bool = False
    random_erasing: float = 0.0

    def __post_init__(self) -> None:
        check_range("rotation", self.rotation, 0.0, 180.0)
        check_range("color_jitter", self.color_jitter, 0.0, 1.0)
        check_range("random_erasing", self.random_erasing, 0.0, 1.0)
        low, high = self.scale
        if not 0.0 < low <= high <= 1.0:
            raise ConfigError(f"`scale` must satisfy 0 < low <= high <= 1. Received: scale={self.scale!r}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> AugmentConfig:
        """The named preset with `overrides` applied, e.g. `AugmentConfig.preset("light", rotation=90)`."""
        check_choice("augment", name, AUGMENT_PRESETS)
        base = _PRESETS[name]
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown augmentation setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(base, **overrides)

    @property
    def enabled(self) -> bool:
        return self != _PRESETS["none"]


_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(hflip=False, rotation=0.0, scale=(1.0, 1.0), color_jitter=0.0),
    "light": AugmentConfig(hflip=True, rotation=0.0, scale=(1.0, 1.0), color_jitter=0.0),
    "standard": AugmentConfig(),
    "strong": AugmentConfig(
        rotation=20.0, scale=(0.35, 1.0), color_jitter=0.3, trivial_augment=True, random_erasing=0.25
    ),
}


@dataclass(frozen=True)
class LoaderConfig:
    """DataLoader settings. `num_workers=None` picks a safe default for the platform."""

    batch_size: int = 64
    num_workers: int | None = None
    persistent_workers: bool = True
    prefetch_factor: int = 2
    drop_last_train: bool = True

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1, 1_000_000)
        if self.num_workers is not None:
            check_range("num_workers", self.num_workers, 0, 1024)


def to_dict(config: object) -> dict[str, Any]:
    """A dataclass as plain YAML/JSON-friendly values (tuples become lists, paths strings)."""
    return _plain(dataclasses.asdict(config))  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build dataclass `cls` from `values`, refusing unknown keys and restoring tuples."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - set(names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**kwargs)


def save_yaml(data: dict[str, Any], path: Path) -> None:
    """Write `data` as YAML atomically."""
    from visiontune.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error naming the file when it is not one."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: can't read YAML config ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of settings, not {type(data).__name__}")
    return data


METHODS = ("finetune", "scratch", "features")
FEATURE_HEADS = ("logreg", "rf", "svm", "knn", "linear", "mlp")  # method="features": see visiontune.features.classical
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd", "rmsprop")
BALANCE = ("auto", "none", "weights", "sampler")
TRACKERS = ("tensorboard", "mlflow")
BN_STATS = ("frozen", "adapt")
MAX_MEMBERS = 8  # an ensemble's members; past a few, each one more buys little and costs a forward pass


@dataclass(frozen=True)
class Monitor:
    """The validation metric that chooses the best epoch (or head), and whether higher or lower is better.

    Example:
        >>> Monitor("valid_loss", "min").better(0.3, 0.4)
        True
    """

    name: str
    mode: str  # "max" or "min"

    def __post_init__(self) -> None:
        check_choice("monitor", self.name, MONITORS)
        check_choice("mode", self.mode, ("max", "min"))

    def better(self, value: float, best: float | None) -> bool:
        """Whether `value` beats `best` (anything finite beats None or NaN)."""
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value < best if self.mode == "min" else value > best

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "minimize" if self.mode == "min" else "maximize"


# the validation metrics that can choose the best epoch or head, and which way is better; the short
# names of earlier releases are aliases
MONITORS = {"valid_accuracy": "max", "valid_balanced_accuracy": "max", "valid_macro_f1": "max", "valid_loss": "min"}
MONITOR_ALIASES = {"accuracy": "valid_accuracy", "balanced_accuracy": "valid_balanced_accuracy",
                   "macro_f1": "valid_macro_f1", "loss": "valid_loss"}  # fmt: skip


def monitor_name(name: str) -> str:
    """The canonical name of a monitor given as typed (`accuracy` and the other short names are aliases)."""
    return MONITOR_ALIASES.get(name, name)


def get_monitor(name: str) -> Monitor:
    """The Monitor called `name` (or one of its aliases)."""
    name = monitor_name(name)
    check_choice("monitor", name, MONITORS)
    return Monitor(name, MONITORS[name])


DEFAULT_BACKBONE = "efficientnet_lite0"  # small, fast on a CPU, offline ImageNet weights


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone, with which weights, at which input size.

    `backbone=None` lets training choose: DEFAULT_BACKBONE, or under a time budget long enough
    a larger EfficientNet-Lite (`training.budget`); `image_size=None` likewise (see
    `training.pipeline`); `weights` is a local .safetensors/.pth file; `pretrained=False` means
    random initialisation.
    """

    backbone: str | None = None
    pretrained: bool = True
    weights: str | None = None
    image_size: int | None = None
    resize_mode: str = "squish"
    drop_rate: float = 0.2
    pool: str = "avg"

    def __post_init__(self) -> None:
        check_choice("resize_mode", self.resize_mode, RESIZE_MODES)
        check_choice("pool", self.pool, ("avg", "max", "avgmax"))
        check_range("drop_rate", self.drop_rate, 0.0, 0.95)
        if self.image_size is not None:
            check_range("image_size", self.image_size, *IMAGE_SIZES)

    @property
    def chosen_backbone(self) -> str:
        """The backbone given, else the default (what runs when no budget picks another)."""
        return self.backbone or DEFAULT_BACKBONE


@dataclass(frozen=True)
class TrainConfig:
    """What every method shares: which method, the monitor, precision, loading, augmentation, the seed.

    `augment` is the training augmentation when fine-tuning and the augmentation of the extra
    views when `features.views > 1`; "auto" is `auto_augment`'s choice: for fine-tuning none up to 8
    epochs and flips beyond, `standard` otherwise (training from scratch, the features method's views).
    `seed` drives the training randomness (initial head weights, batch order, augmentation);
    `data.seed` the split, so one can change without the other.
    """

    method: str = "finetune"
    monitor: str = "auto"
    precision: str = "auto"
    augment: str = "auto"
    rotation: float | None = None
    num_workers: int | None = None
    seed: int = 42
    log: tuple[str, ...] = ()  # trackers besides the run folder: tensorboard, mlflow (training.tracking)
    mlflow_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db here)
    mlflow_experiment: str | None = None  # None: named after the data folder
    budget: str | None = None  # a time budget ("10m", "90s", "1.5h"): training.budget plans a recipe that fits
    decode_once: bool = True  # fine-tuning decodes each file once into data.decoded's cache, read by every epoch

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        object.__setattr__(self, "monitor", monitor_name(self.monitor))
        check_choice("monitor", self.monitor, ("auto", *MONITORS))
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("augment", self.augment, ("auto", *AUGMENT_PRESETS))
        if self.rotation is not None:
            check_range("rotation", self.rotation, 0.0, 180.0)
        if self.num_workers is not None:
            check_range("num_workers", self.num_workers, 0, 1024)
        check_range("seed", self.seed, 0, 2**32 - 1)
        if isinstance(self.log, str):  # "tensorboard,mlflow" from the command line or YAML
            names = (t.strip() for t in self.log.split(","))
            object.__setattr__(self, "log", tuple(dict.fromkeys(t for t in names if t and t != "none")))
        for tracker in self.log:
            check_choice("log", tracker, TRACKERS)
        if self.budget is not None:
            object.__setattr__(self, "budget", str(self.budget).strip())
            parse_duration(self.budget)

    @property
    def augment_preset(self) -> str:
        """The preset `augment` names ("auto" resolved for this method and a run of the default length)."""
        return self.augment if self.augment != "auto" else auto_augment(self.method)

    def augment_config(self) -> AugmentConfig:
        """The augmentation preset with the CLI's overrides applied."""
        overrides = {} if self.rotation is None else {"rotation": self.rotation}
        return AugmentConfig.preset(self.augment_preset, **overrides)


LONG_RUN_EPOCHS = 8  # `augment: auto` for fine-tuning: none up to this many epochs, flips beyond


def auto_augment(method: str, epochs: int = 0) -> str:
    """The preset `augment: auto` stands for, given the method and the fine-tuning epochs.

    Fine-tuning from pretrained weights: none for runs of up to 8 epochs (in 4-epoch runs flips,
    zoom, label smoothing all lost accuracy), horizontal flips for longer ones (16 epochs at 112 px
    on the demo: 0.905 test with flips, 0.898 without; bench/RESULTS.md). Scratch models and the
    features method's extra views: `standard`.
    """
    if method != "finetune":
        return "standard"
    return "light" if epochs > LONG_RUN_EPOCHS else "none"


def parse_duration(text: str | float, name: str = "budget") -> float:
    """Seconds from '90s', '10m', '1.5h' or a plain number of seconds; ConfigError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"] if match else 0.0
    if not 0 < seconds < 1e7:
        raise ConfigError(f"`{name}` must be a positive duration like 90s, 10m or 1.5h. Received: {name}={text!r}")
    return seconds


@dataclass(frozen=True)
class FinetuneConfig:
    """The training loop (methods finetune and scratch).

    `members` > 1 trains that many models, each with the whole recipe and its own seed, and
    bundles them as one `models.Ensemble` (their probabilities averaged; predictions cost as many
    forward passes). None leaves it to a `--budget`, which plans members once each can still
    train SATURATED epochs of the largest backbone offered (`training.budget`).

    `lr=None` means "find it" with the learning-rate range test. With `freeze_epochs` > 0 the run
    is fastai's fine_tune (the head alone at `lr` on the frozen backbone, then every layer peaking
    at lr / 2); with none, every layer learns from the first step on one cycle peaking at `lr`.
    `bn_stats="frozen"` keeps the backbone's pretrained BatchNorm statistics while fine-tuning
    (what a frozen head epoch needs: no jolt when the backbone unfreezes); "adapt" lets them follow.

    The defaults are the recipe a careful bare PyTorch loop uses, chosen for accuracy per second on
    Fashion-MNIST (the demo subset and 4,000 images; bench/RESULTS.md): 4 epochs of every layer at
    one learning rate, no frozen epoch, no label smoothing, no augmentation (`train.augment`
    "auto"). The former fastai-style recipe (1 + 6 epochs, a tenth of the rate for the earliest
    layers, frozen BatchNorm, label smoothing 0.1, flips and zoom) scored 0.6-0.8 points higher in 1.8x the time.

    `channels_last` trains in channels-last memory on every device, not only GPUs: on
    the 2-core CPU an EfficientNet-Lite0 training step ran 1.6x faster at 96 px and 2.3x at 64 px
    (ResNet-18 1.1x, EfficientNet-B0 1.6x; bench/channels_last.py, RESULTS.md).
    """

    epochs: int = 4
    freeze_epochs: int = 0
    lr: float | None = 2e-3
    lr_ratio: float = 1.0
    unfreeze_top: int | None = None
    bn_stats: str = "adapt"
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    momentum: float = 0.9
    label_smoothing: float = 0.0
    batch_size: int = 64
    accumulate: int = 1
    clip_grad: float | None = 1.0
    channels_last: bool | None = True  # None (config files of earlier releases) reads as True
    compile: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float | None = None
    balance: str = "auto"
    patience: int | None = None
    members: int | None = None  # None: 1, or what a --budget plans; N: an ensemble of N (seeds seed .. seed + N - 1)

    def __post_init__(self) -> None:
        if self.channels_last is None:
            object.__setattr__(self, "channels_last", True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("balance", self.balance, BALANCE)
        check_choice("bn_stats", self.bn_stats, BN_STATS)
        check_range("epochs", self.epochs, 0, 100_000)
        check_range("freeze_epochs", self.freeze_epochs, 0, 100_000)
        if self.epochs + self.freeze_epochs < 1:
            raise ConfigError("`epochs` + `freeze_epochs` must be at least 1")
        if self.lr is not None:
            check_range("lr", self.lr, 0.0, 10.0, low_open=True)
        check_range("lr_ratio", self.lr_ratio, 1.0, 1e6)
        check_range("weight_decay", self.weight_decay, 0.0, 10.0)
        check_range("momentum", self.momentum, 0.0, 1.0)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_range("batch_size", self.batch_size, 1, 1_000_000)
        check_range("accumulate", self.accumulate, 1, 10_000)
        if self.clip_grad is not None:
            check_range("clip_grad", self.clip_grad, 0.0, 1e9, low_open=True)
        check_range("mixup", self.mixup, 0.0, 10.0)
        check_range("cutmix", self.cutmix, 0.0, 10.0)
        if self.ema is not None:
            check_range("ema", self.ema, 0.0, 1.0, low_open=True)
        if self.patience is not None:
            check_range("patience", self.patience, 1, 100_000)
        if self.members is not None:
            check_range("members", self.members, 1, MAX_MEMBERS)


@dataclass(frozen=True)
class FeaturesConfig:
    """Frozen features and classical heads (method="features"): which heads, extra views, mirror averaging.

    `heads` empty means the default set (`features.heads.DEFAULT_HEADS`).
    """

    heads: tuple[str, ...] = ()
    views: int = 1
    tta: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.heads, str):  # "logreg,knn" from YAML or Python
            object.__setattr__(self, "heads", tuple(h.strip() for h in self.heads.split(",") if h.strip()))
        for head in self.heads:
            check_choice("heads", head, FEATURE_HEADS)
        if len(set(self.heads)) != len(self.heads):
            raise ConfigError(f"`heads` names a head twice. Received: heads={list(self.heads)!r}")
        check_range("views", self.views, 1, 64)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "finetune": FinetuneConfig,
    "features": FeaturesConfig,
}
ALIASES = {"model": {"name": "backbone"}}  # the spellings of earlier releases, still read


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; saved as config.yaml in the run folder and reloadable.

    Example:
        >>> RunConfig(DataConfig(source="photos"), finetune=FinetuneConfig(epochs=3)).finetune.epochs
        3
    """

    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    features: FeaturesConfig = FeaturesConfig()
    out: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        sections = {name: to_dict(getattr(self, name)) for name in SECTIONS}
        return {**sections, "out": self.out, "name": self.name}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """From config.yaml's mapping; the one-section `train` of earlier releases is split into its sections."""
        unknown = set(values) - {*SECTIONS, "out", "name"}
        if unknown:
            raise ConfigError(
                f"unknown config section(s): {', '.join(sorted(unknown))}; use {', '.join(SECTIONS)}, out, name"
            )
        sections = _split_legacy_train({k: dict(values.get(k) or {}) for k in SECTIONS})
        for section, aliases in ALIASES.items():
            for old, new in aliases.items():
                if old in sections[section]:
                    sections[section].setdefault(new, sections[section].pop(old))
        built = {name: from_dict(kind, sections[name]) for name, kind in SECTIONS.items()}
        return cls(**built, out=values.get("out"), name=values.get("name"))

    def replace(self, section: str, **changes: Any) -> RunConfig:
        """A copy with `changes` applied to one section, e.g. `config.replace("finetune", epochs=3)`."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


def _split_legacy_train(sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Move fine-tune and features settings that a pre-sections config.yaml kept under `train`."""
    train = sections["train"]
    for name in ("finetune", "features"):
        for key in [f.name for f in dataclasses.fields(SECTIONS[name])]:
            if key in train:
                sections[name].setdefault(key, train.pop(key))
    if "batch_size" in train:  # earlier releases kept it beside the shared settings
        sections["finetune"].setdefault("batch_size", train.pop("batch_size"))
    return sections


def merge_overrides(
    base: dict[str, Any], overrides: dict[str, dict[str, Any]], *, keep_none: tuple[str, ...] = ("lr",)
) -> dict[str, Any]:
    """`base` (a config.yaml mapping) with the options a user typed on top; None means "not typed".

    The one merge behind `train --config` and `tune --config`: a value from the file is only
    replaced by an option that was given. Keys in `keep_none` take None as a value (`--lr auto`).
    Legacy flat `train` sections are split first, so old files merge with new options.
    """
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    legacy = _split_legacy_train({k: dict(merged.get(k) or {}) for k in SECTIONS})
    merged.update({k: v for k, v in legacy.items() if v or k in merged})
    for section, values in overrides.items():
        if section in SECTIONS:
            merged.setdefault(section, {})
            merged[section].update({k: v for k, v in values.items() if v is not None or k in keep_none})
        elif values is not None:
            merged[section] = values
    return merged
