"""Configuration as frozen dataclasses, one per stage, loadable from and saved to YAML.

Keyword arguments with string choices are checked here, once, at the boundary, so the rest of
the code can trust them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from visiontune.errors import ConfigError

T = TypeVar("T")

RESIZE_MODES = ("squish", "crop", "pad")
AUGMENT_PRESETS = ("none", "light", "standard", "strong")


def check_choice(name: str, value: object, choices: Iterable[object]) -> None:
    """Raise ConfigError in the Keras style when `value` is not one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"`{name}` must be one of {', '.join(map(repr, choices))}. Received: {name}={value!r}")


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    """Raise ConfigError when `value` is outside [low, high] (or (low, high] with low_open)."""
    bad = value <= low if low_open else value < low
    if bad or value > high:
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
    pin_memory: bool | None = None
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
FEATURE_HEADS = ("logreg", "rf", "svm", "knn", "linear", "mlp")  # method="features": see visiontune.features.heads
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd", "rmsprop")
BALANCE = ("auto", "none", "weights", "sampler")
MONITORS = ("auto", "accuracy", "balanced_accuracy", "valid_loss")
BN_STATS = ("frozen", "adapt")


@dataclass(frozen=True)
class ModelConfig:
    """Which network, with which weights, at which input size.

    `image_size=None` uses the backbone's default; small images (e.g. 28 px) train well upsampled to 64.
    `weights` is a local .safetensors/.pth file; `pretrained=False` means random initialisation.
    """

    name: str = "efficientnet_lite0"
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
            check_range("image_size", self.image_size, 8, 4096)


@dataclass(frozen=True)
class TrainConfig:
    """How to train: fastai's fine_tune by default (frozen epochs, then all layers with discriminative LRs).

    `lr=None` means "find it" with the learning-rate range test; `epochs` counts the unfrozen phase.
    `bn_stats="frozen"` keeps the backbone's pretrained BatchNorm statistics while fine-tuning
    (Keras' advice; no jolt when the backbone unfreezes); "adapt" lets them follow the new data.

    The defaults were chosen on the bundled Fashion-MNIST subset (bench/RESULTS.md): 1 + 6 epochs,
    earliest layers at a tenth of the head's rate, and the `standard` augmentation (flips and a mild
    zoom); rotation, a stronger zoom, colour jitter and EMA helped neither a short schedule nor
    small images (`strong` has them, for longer runs).
    """

    method: str = "finetune"
    epochs: int = 6
    freeze_epochs: int = 1
    lr: float | None = 2e-3
    lr_ratio: float = 10.0
    unfreeze_top: int | None = None
    bn_stats: str = "frozen"
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    momentum: float = 0.9
    label_smoothing: float = 0.1
    batch_size: int = 64
    accumulate: int = 1
    clip_grad: float | None = 1.0
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    augment: str = "standard"
    rotation: float | None = None
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float | None = None
    balance: str = "auto"
    monitor: str = "auto"
    patience: int | None = None
    num_workers: int | None = None
    seed: int = 42
    heads: tuple[str, ...] = ()
    views: int = 1
    tta: bool = False

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        self._check_features()
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("augment", self.augment, AUGMENT_PRESETS)
        check_choice("balance", self.balance, BALANCE)
        check_choice("monitor", self.monitor, MONITORS)
        check_choice("bn_stats", self.bn_stats, BN_STATS)
        check_range("epochs", self.epochs, 0, 100_000)
        check_range("freeze_epochs", self.freeze_epochs, 0, 100_000)
        if self.epochs + self.freeze_epochs < 1:
            raise ConfigError("`epochs` + `freeze_epochs` must be at least 1")
        if self.lr is not None:
            check_range("lr", self.lr, 0.0, 10.0, low_open=True)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_range("batch_size", self.batch_size, 1, 1_000_000)
        check_range("accumulate", self.accumulate, 1, 10_000)
        check_range("mixup", self.mixup, 0.0, 10.0)
        check_range("cutmix", self.cutmix, 0.0, 10.0)
        if self.ema is not None:
            check_range("ema", self.ema, 0.0, 1.0, low_open=True)

    def _check_features(self) -> None:
        """`heads` (empty: the default set), `views` and `tta` belong to method="features"."""
        if isinstance(self.heads, str):  # "logreg,knn" from YAML or Python
            object.__setattr__(self, "heads", tuple(h.strip() for h in self.heads.split(",") if h.strip()))
        for head in self.heads:
            check_choice("heads", head, FEATURE_HEADS)
        if len(set(self.heads)) != len(self.heads):
            raise ConfigError(f"`heads` names a head twice. Received: heads={list(self.heads)!r}")
        check_range("views", self.views, 1, 64)
        if self.method != "features" and (self.heads or self.views != 1 or self.tta):
            raise ConfigError(
                f"`heads`, `views` and `tta` apply to method='features' only. Received: method={self.method!r}"
            )

    def augment_config(self) -> AugmentConfig:
        """The augmentation preset with the CLI's overrides applied."""
        overrides = {} if self.rotation is None else {"rotation": self.rotation}
        return AugmentConfig.preset(self.augment, **overrides)


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; saved as config.yaml in the run folder and reloadable."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    out: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": to_dict(self.data),
            "model": to_dict(self.model),
            "train": to_dict(self.train),
            "out": self.out,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        unknown = set(values) - {"data", "model", "train", "out", "name"}
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}; use data, model, train")
        return cls(
            data=from_dict(DataConfig, values.get("data") or {}),
            model=from_dict(ModelConfig, values.get("model") or {}),
            train=from_dict(TrainConfig, values.get("train") or {}),
            out=values.get("out"),
            name=values.get("name"),
        )
