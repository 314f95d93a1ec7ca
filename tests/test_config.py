"""The config boundary: every float option refuses NaN and infinity, whatever its range."""

from __future__ import annotations

import dataclasses
import math

import pytest

from visiontune.config import SECTIONS, AugmentConfig, DataConfig, RunConfig, check_range
from visiontune.errors import ConfigError

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
