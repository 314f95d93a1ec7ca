"""What `train DATA` decides from the data when no option says (README, Training): the input size (small images
upsampled about 3x, to 64-224 px; photos at 224), the monitor (balanced accuracy over 1.5x imbalance) and the
loss (class weights over 3x). Expected values follow the README's rules, not the implementation's table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from tests.conftest import write_class_folders
from visiontune.config import DataConfig, FinetuneConfig, ModelConfig, RunConfig, TrainConfig, auto_augment
from visiontune.data.audit import largest_useful_size, suggest_image_size
from visiontune.data.dataset import load_data
from visiontune.evaluation.metrics import auto_monitor
from visiontune.runs.folder import RunFolder
from visiontune.training.finetune import resolve_balance
from visiontune.training.pipeline import prepare, resolve, train
from visiontune.training.trainer import make_accelerator


def test_small_images_are_upsampled_about_3x_to_64_to_224() -> None:
    for side in range(8, 112):
        size = suggest_image_size([side] * 3)[0]
        assert 64 <= size <= 224 and size % 16 == 0, side
        if 64 <= 3 * side <= 224:
            assert 3 * side <= size < 3 * side + 16, side  # about 3x: the next multiple of 16
        else:
            assert size == (64 if 3 * side < 64 else 224), side  # the clamp


def test_photos_are_suggested_their_own_size_within_224_to_384() -> None:
    for side in (112, 150, 224, 250, 300, 333, 384, 400, 512, 4000):
        size = suggest_image_size([side] * 3)[0]
        assert 224 <= size <= 384 and size % 32 == 0, side
        if 224 <= side <= 384:
            assert abs(size - side) <= 16, side  # the nearest multiple of 32
        else:
            assert size == (224 if side < 224 else 384), side


def _photos(root: Path, side: int) -> Path:
    """root/<cat|coffee>/*.png: real photos cut to side x side (3 crops each)."""
    for name in ("chelsea", "coffee"):
        photo = getattr(skdata, name)()
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(3):
            Image.fromarray(photo[k * 20 : k * 20 + side, k * 30 : k * 30 + side]).save(folder / f"{k}.png")
    return root


def _resolved(source: Path, method: str = "finetune") -> RunConfig:
    config = RunConfig(DataConfig(source=str(source), valid_pct=0.34), ModelConfig(), TrainConfig(method=method))
    return resolve(config, load_data(source, config.data), 1.0)


def test_train_picks_the_clamped_suggestion_for_small_images_and_224_for_photos(
    tmp_path: Path, fashion: dict[str, np.ndarray]
) -> None:
    small = write_class_folders(tmp_path / "fashion", fashion, per_class=4)  # 28 px
    assert _resolved(small).model.image_size == 96  # 28 x 3 = 84, up to a multiple of 16
    photos = _photos(tmp_path / "photos", 280)  # the audit would say 288...
    assert suggest_image_size([280])[0] > 224
    assert _resolved(photos).model.image_size == 224  # ...train keeps the backbone's 224
    assert _resolved(small, "features").model.image_size == 224  # frozen features: the backbone's own size


def test_augment_auto_is_none_for_fine_tuning_and_standard_for_the_other_methods(
    tmp_path: Path, fashion: dict[str, np.ndarray]
) -> None:
    small = write_class_folders(tmp_path / "fashion", fashion, per_class=4)
    assert _resolved(small).train.augment == "none"  # config.yaml names the preset that ran
    assert _resolved(small, "features").train.augment == "standard"  # --views N has augmented copies to make
    assert TrainConfig(method="scratch").augment_config().enabled
    assert not TrainConfig().augment_config().enabled
    # longer fine-tuning runs get flips: 9 epochs, or 8 after a frozen one
    for finetune in (FinetuneConfig(epochs=9), FinetuneConfig(epochs=8, freeze_epochs=1)):
        config = RunConfig(DataConfig(source=str(small), valid_pct=0.34), finetune=finetune)
        assert resolve(config, load_data(small, config.data), 1.0).train.augment == "light"
    assert [auto_augment("finetune", e) for e in (1, 4, 8, 9, 16)] == ["none"] * 3 + ["light"] * 2


def test_a_budget_that_plans_a_long_run_gives_it_flips(tmp_path: Path, fashion: dict[str, np.ndarray]) -> None:
    small = write_class_folders(tmp_path / "fashion", fashion, per_class=4)
    for augment, budget, expected in (("auto", "10h", "light"), ("none", "10h", "none"), ("auto", None, "none")):
        config = RunConfig(
            DataConfig(source=str(small), valid_pct=0.34),
            ModelConfig(backbone="small_cnn", image_size=32),
            TrainConfig(augment=augment, budget=budget),
        )
        prepared = prepare(config, RunFolder(tmp_path / f"run-{augment}-{budget}"), make_accelerator("fp32"),
                           resume=False)  # fmt: skip
        assert prepared.config.train.augment == expected, (augment, budget)
        assert prepared.config.finetune.epochs == (16 if budget else 4)  # 10 hours buy the most epochs planned


@pytest.mark.parametrize(
    ("ratio", "monitor"),
    [
        (1.0, "valid_accuracy"),
        (1.5, "valid_accuracy"),
        (1.51, "valid_balanced_accuracy"),
        (40, "valid_balanced_accuracy"),
    ],
)
def test_balanced_accuracy_is_monitored_over_1_5x(ratio: float, monitor: str) -> None:
    assert auto_monitor(ratio).name == monitor


@pytest.mark.parametrize(("ratio", "balance"), [(1.0, "none"), (3.0, "none"), (3.01, "weights"), (10.0, "weights")])
def test_class_weights_over_3x_unless_another_balance_is_asked(ratio: float, balance: str) -> None:
    assert resolve_balance(FinetuneConfig(), ratio) == balance
    assert resolve_balance(FinetuneConfig(balance="sampler"), ratio) == "sampler"
    assert resolve_balance(FinetuneConfig(balance="none"), ratio) == "none"


def test_a_1_6x_imbalance_changes_the_monitor_but_not_the_loss(tmp_path: Path, fashion: dict[str, np.ndarray]) -> None:
    """End to end: training images counted per class (16 and 10, valid apart), the rules applied to the ratio."""
    root = tmp_path / "data"
    write_class_folders(root / "train", fashion, classes=(0,), per_class=16)
    write_class_folders(root / "train", fashion, classes=(1,), per_class=10)
    write_class_folders(root / "val", fashion, classes=(0, 1), per_class=4, split="test")
    config = RunConfig(
        DataConfig(source=str(root)),
        ModelConfig(backbone="mlp", image_size=28),
        TrainConfig(method="scratch", num_workers=0, augment="none"),
        FinetuneConfig(epochs=1, freeze_epochs=0, batch_size=8),
        out=str(tmp_path / "run"),
    )
    result = train(config)
    info = json.loads((result.run_dir / "run.json").read_text())
    assert math.isclose(info["imbalance_ratio"], 1.6) and info["monitor"] == "valid_balanced_accuracy"
    assert info["balance"] == "none" and not info.get("class_weights")


def test_a_budget_upsamples_small_images_at_most_about_4x() -> None:
    for side in range(8, 112):
        ceiling = largest_useful_size([side] * 3)
        assert ceiling is not None and ceiling % 16 == 0 and 4 * side <= ceiling < 4 * side + 16, side
    assert largest_useful_size([28, 28, 29]) == 112  # Fashion-MNIST: the former 4x rule's size
    for side in (112, 224, 4000):
        assert largest_useful_size([side] * 3) is None, side  # photos: the backbone's own size is the limit
    assert largest_useful_size([]) is None
