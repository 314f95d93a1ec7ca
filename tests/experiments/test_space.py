"""The search space: YAML and --grid parsing, what a trial draws, and the run config it becomes."""

from __future__ import annotations

import optuna
import pytest

from visiontune.config import DataConfig, FeaturesConfig, RunConfig, TrainConfig
from visiontune.errors import ConfigError
from visiontune.experiments.space import Range, SearchSpace, apply_params, grid_size, parse_grid, suggest_params
from visiontune.experiments.tune import TuneConfig, make_sampler

BASE = RunConfig(DataConfig(source="photos"), train=TrainConfig(augment="light"))


def test_parse_grid_types_values_by_key_and_keeps_their_order() -> None:
    grid = parse_grid(["image_size=128, 32,64,32", "augment=none,light", "lr=1e-3,3e-3"])
    assert grid == {"image_size": (128, 32, 64), "augment": ("none", "light"), "lr": (1e-3, 3e-3)}
    assert grid_size(grid) == 3 * 2 * 2 and grid_size({}) == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["image_size"], "KEY=V1,V2"),
        (["image_size="], "KEY=V1,V2"),
        (["size=32"], "`--grid key` must be one of"),
        (["image_size=32.5"], "whole numbers"),
        (["lr=fast"], "takes numbers"),
        (["lr=0.1", "lr=0.2"], "names lr twice"),
    ],
)
def test_parse_grid_refuses_bad_specs(spec: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid(spec)


def test_space_from_yaml_values() -> None:
    space = SearchSpace.from_dict(
        {"lr": {"low": 3e-4, "high": 3e-3, "log": True}, "image_size": [32, 64], "method": "features", "rotation": None}
    )
    assert space.lr == Range(3e-4, 3e-3, log=True)
    assert space.image_size == (32, 64) and space.method == ("features",) and space.rotation is None
    assert "method" not in space.searched() and {"lr", "image_size"} <= set(space.searched())
    assert SearchSpace.from_dict(space.to_dict()) == space  # what the study stores reads back the same


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"learning_rate": [0.1]}, "unknown key"),
        ({"lr": {"low": 0.1}}, "as a range is"),
        ({"lr": {"low": 0.1, "high": 0.01}}, "low <= high"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "low > 0"),
        ({"method": ["scratch"]}, "`method` must be one of"),
        ({"augment": ["wild"]}, "`augment` must be one of"),
        ({"backbone": {"low": 1, "high": 2}}, "list of choices"),
    ],
)
def test_bad_space_values_are_refused(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_dict(values)


def test_trials_draw_only_what_applies_and_stay_inside_the_space() -> None:
    """200 TPE-free random draws: each becomes a valid run config, features trials draw no fine-tuning settings."""
    space = SearchSpace(backbone=("efficientnet_lite0", "efficientnet_lite1"), image_size=(32, 64))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(200):
        trial = study.ask()
        params = suggest_params(trial, space, BASE)
        config = apply_params(BASE, params)
        if params["method"] == "features":
            assert set(params) == {"method", "backbone", "image_size"}
        else:
            assert 1e-4 <= params["lr"] <= 1e-2 and params["freeze_epochs"] in (0, 1, 2)
            assert params["label_smoothing"] in (0.0, 0.05, 0.1, 0.15, 0.2)
            assert ("rotation" in params) == (params["augment"] != "none")
            assert config.finetune.lr == params["lr"] and config.train.augment == params["augment"]
            seen.add(params["augment"])
        assert config.model.backbone == params["backbone"] and config.model.image_size == params["image_size"]
        assert config.data == BASE.data  # a trial never changes the data
        study.tell(trial, 0.5)
    assert seen == {"none", "light", "standard"}  # not `strong` by default


def test_fixed_dimensions_come_from_the_base_config() -> None:
    space = SearchSpace(method=("finetune",), backbone=None, image_size=(48,), augment=None, rotation=None)
    params = suggest_params(
        optuna.trial.FixedTrial({"lr": 1e-3, "freeze_epochs": 1, "label_smoothing": 0.1}), space, BASE
    )
    config = apply_params(BASE, params)
    assert config.model.backbone == BASE.model.backbone and config.model.image_size == 48
    assert config.train.augment == "light" and "augment" not in params and "rotation" not in params


def test_a_features_base_switched_to_fine_tuning_drops_the_features_settings() -> None:
    base = RunConfig(
        DataConfig(source="x"),
        train=TrainConfig(method="features"),
        features=FeaturesConfig(heads=("logreg",), tta=True),
    )
    config = apply_params(base, {"method": "finetune", "lr": 1e-3})
    assert config.features == FeaturesConfig() and config.finetune.lr == 1e-3
    assert apply_params(base, {"image_size": 64}).features.heads == ("logreg",)


@pytest.mark.parametrize(
    "grid", [{"image_size": (32, 64, 96, 128)}, {"image_size": (32, 64), "augment": ("none", "light")}]
)
def test_a_grid_visits_every_point_once_across_sessions(grid: dict) -> None:
    """tune makes a sampler per trial (and per resumed session): a grid must still cover each point once."""
    config = TuneConfig(BASE, trials=grid_size(grid), grid=grid)
    space = SearchSpace.from_grid(grid)
    study = optuna.create_study()
    for number in range(grid_size(grid)):
        study.sampler = make_sampler(config, number)
        study.optimize(lambda t: (suggest_params(t, space, BASE), 0.0)[1], n_trials=1)
    points = {tuple(t.params[k] for k in grid) for t in study.trials}
    assert len(points) == grid_size(grid)


def test_tpe_start_up_draws_differ_between_sessions() -> None:
    """A resumed session re-creates the sampler: seeded by trial number, it does not replay the first draws."""
    config = TuneConfig(BASE, trials=4)
    study = optuna.create_study()
    for number in range(4):
        study.sampler = make_sampler(config, number)
        study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=1)
    assert len({t.params["lr"] for t in study.trials}) == 4
