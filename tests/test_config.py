"""Configuration: the sections, config files of the previous release, the one override merge, the monitors,
and the boundary: every float option refuses NaN and infinity, whatever its range."""

from __future__ import annotations

import dataclasses
import math

import pytest

from visiontune.config import (
    SECTIONS,
    AugmentConfig,
    DataConfig,
    FeaturesConfig,
    FinetuneConfig,
    ModelConfig,
    Monitor,
    RunConfig,
    TrainConfig,
    check_range,
    get_monitor,
    merge_overrides,
)
from visiontune.errors import ConfigError

PREVIOUS_RELEASE = {  # a config.yaml as the previous release wrote it: one `train` section, `model.name`
    "data": {"source": "photos", "seed": 7},
    "model": {"name": "efficientnet_lite2", "image_size": 112},
    "train": {"method": "finetune", "epochs": 4, "freeze_epochs": 1, "lr": 0.001, "batch_size": 32,
              "monitor": "balanced_accuracy", "heads": [], "views": 1, "tta": False, "seed": 7, "augment": "light"},
    "out": "runs/x",
    "name": None,
}  # fmt: skip


def test_a_config_of_the_previous_release_loads_into_the_sections() -> None:
    config = RunConfig.from_dict(PREVIOUS_RELEASE)
    assert config.model.backbone == "efficientnet_lite2" and config.model.image_size == 112
    assert config.finetune == FinetuneConfig(epochs=4, freeze_epochs=1, lr=0.001, batch_size=32)
    assert config.train == TrainConfig(method="finetune", monitor="valid_balanced_accuracy", augment="light", seed=7)
    assert config.features == FeaturesConfig()
    assert RunConfig.from_dict(config.to_dict()) == config  # and what this release writes reads back the same
    assert list(config.to_dict()) == ["data", "model", "train", "finetune", "features", "out", "name"]


def test_options_typed_override_the_file_and_nothing_else() -> None:
    typed = {
        "data": {"source": None, "seed": None},
        "model": {"backbone": None},
        "train": {"augment": "none", "seed": None},
        "finetune": {"epochs": 9, "lr": None},  # lr typed as `--lr auto`: None is the value
        "features": {"heads": None},
    }
    config = RunConfig.from_dict(merge_overrides(PREVIOUS_RELEASE, typed))
    assert config.finetune.epochs == 9 and config.finetune.lr is None and config.train.augment == "none"
    assert config.finetune.batch_size == 32 and config.data.seed == 7 and config.model.backbone == "efficientnet_lite2"
    untyped = merge_overrides(PREVIOUS_RELEASE, {"finetune": {"epochs": None}})
    assert RunConfig.from_dict(untyped).finetune.epochs == 4


def test_unknown_sections_and_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown config section.*trainer"):
        RunConfig.from_dict({"data": {}, "trainer": {}})
    with pytest.raises(ConfigError, match=r"FinetuneConfig: unknown key.*epoch\b"):
        RunConfig.from_dict({"data": {}, "finetune": {"epoch": 3}})


@pytest.mark.parametrize(
    ("section", "values", "fragment"),
    [
        (FinetuneConfig, {"lr": 0.0}, "`lr` must be in"),
        (FinetuneConfig, {"epochs": 0, "freeze_epochs": 0}, "at least 1"),
        (TrainConfig, {"seed": -1}, "`seed` must be in"),
        (TrainConfig, {"monitor": "f1"}, "`monitor` must be one of"),
        (FeaturesConfig, {"heads": ("knn", "knn")}, "names a head twice"),
        (ModelConfig, {"image_size": 100_000}, "`image_size` must be in"),
        (DataConfig, {"valid_pct": 0.95}, "`valid_pct` must be in"),
    ],
)
def test_bad_values_are_refused_where_they_are_set(section: type, values: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        section(**values)


def test_a_monitor_is_a_name_and_a_direction() -> None:
    loss, accuracy = get_monitor("valid_loss"), get_monitor("accuracy")  # the short name of earlier releases
    assert (loss.mode, loss.direction) == ("min", "minimize") and loss.better(0.2, 0.3) and not loss.better(0.3, 0.2)
    assert accuracy == Monitor("valid_accuracy", "max") and accuracy.better(0.9, 0.8)
    assert accuracy.better(0.1, None) and accuracy.better(0.1, float("nan")) and not accuracy.better(float("nan"), 0.1)
    with pytest.raises(ConfigError, match="`mode` must be one of"):
        Monitor("valid_loss", "up")


FLOAT_FIELDS = [
    (kind, f.name)
    for kind in (*SECTIONS.values(), AugmentConfig)
    for f in dataclasses.fields(kind)
    if "float" in str(f.type) and "tuple" not in str(f.type)
]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(("kind", "name"), FLOAT_FIELDS, ids=[f"{k.__name__}.{n}" for k, n in FLOAT_FIELDS])
def test_every_float_option_refuses_nan_and_infinity(kind: type, name: str, value: float) -> None:
    extra = {"source": "x"} if kind is DataConfig else {}
    with pytest.raises(ConfigError, match=f"`{name}` must be"):
        kind(**extra, **{name: value})


def test_check_range_refuses_nan_in_a_config_file() -> None:
    with pytest.raises(ConfigError, match="Received: rotation=nan"):
        RunConfig.from_dict({"data": {"source": "x"}, "train": {"rotation": float("nan")}})
    check_range("x", 0.5, 0.0, 1.0)  # an ordinary value still passes


def test_channels_last_is_on_and_earlier_configs_null_reads_as_on() -> None:
    assert FinetuneConfig().channels_last is True and FinetuneConfig(channels_last=False).channels_last is False
    assert FinetuneConfig(channels_last=None).channels_last is True  # config.yaml of earlier releases: null
