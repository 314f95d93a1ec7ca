"""`visiontune models`."""

from __future__ import annotations

from typer.testing import CliRunner

from visiontune.cli.main import app


def test_models_lists_our_backbones_and_their_weights() -> None:
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "efficientnet_lite0" in result.output and "small_cnn" in result.output
    assert "offline (package installed)" in result.output and "none (scratch)" in result.output
    assert "3.37" in result.output  # lite0's backbone in millions of parameters, counted on the meta device
    assert "--weights FILE" in result.output


def test_models_all_lists_timm_names_matching_a_pattern() -> None:
    result = CliRunner().invoke(app, ["models", "--all", "convnext_t"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    listed = result.output.split("timm architectures matching 'convnext_t'")[1].split()
    assert listed == ["convnext_tiny", "convnext_tiny_hnf"]
