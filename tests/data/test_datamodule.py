from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.data import image_factories as make
from visiontune.config import AugmentConfig, LoaderConfig
from visiontune.data import loader as loader_module
from visiontune.data.datamodule import DataModule
from visiontune.data.dataset import load_data
from visiontune.data.loader import default_num_workers
from visiontune.data.samplers import EpochSampler, balanced_weights
from visiontune.data.transforms import Preprocessing
from visiontune.system import inference_batch_size

PRE = Preprocessing(image_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _module(root: Path, **loader: object) -> DataModule:
    cfg = LoaderConfig(**{"batch_size": 8, "num_workers": 0, **loader})  # type: ignore[arg-type]
    return DataModule(load_data(root), PRE, AugmentConfig.preset("standard"), cfg, seed=1)


def test_eval_batches_are_rgb_pixels_and_train_batches_normalised(class_folder: Path) -> None:
    dm = _module(class_folder)
    batch = next(iter(dm.eval_dataloader("valid")))
    assert batch.pixels.shape == (6, 32, 32, 3) and batch.pixels.dtype == torch.uint8  # normalised on the device
    assert torch.equal(batch.pixels[..., 0], batch.pixels[..., 1])  # grey PNGs become RGB with equal channels
    assert sorted(batch.targets.tolist()) == [0, 0, 1, 1, 2, 2]
    assert batch.indices.tolist() == list(range(6)) and batch.failures == []
    train = next(iter(dm.train_dataloader()))
    assert train.pixels.shape == (8, 3, 32, 32) and train.pixels.dtype == torch.float32
    assert train.pixels.min() >= -1.0 and train.pixels.max() <= 1.0


def test_evaluation_batches_take_the_inference_size_training_keeps_its_own(class_folder: Path) -> None:
    dm = _module(class_folder, batch_size=2)
    assert dm.train_dataloader().batch_size == 2  # the optimisation's batch is the user's
    expected = inference_batch_size("cpu", PRE.image_size, torch.get_num_threads())  # 256 at 32 px on 2 threads
    assert dm.eval_dataloader("valid").batch_size == dm.eval_batch_size() == expected > 2
    large = DataModule(dm.data, Preprocessing(image_size=(320, 320), mean=PRE.mean, std=PRE.std),
                       AugmentConfig.preset("none"), dm.loader)  # fmt: skip
    assert large.eval_batch_size() < expected


def test_every_special_file_loads_as_rgb(class_folder: Path) -> None:
    folder = class_folder / "trouser"
    specials = [
        make.write_cmyk_jpeg(folder / "cmyk.jpg"),
        make.write_png16(folder / "deep.png"),
        make.write_rgba_png(folder / "alpha.png"),
        make.write_exif_rotated_jpeg(folder / "rotated.jpg"),
    ]
    data = load_data(class_folder, check=False)
    dm = DataModule(data, PRE, AugmentConfig.preset("none"), LoaderConfig(batch_size=64, num_workers=0))
    names = {s.path.name for s in data.samples}
    assert {p.name for p in specials} <= names
    for split in data.splits:
        dataset = dm.dataset(split, train=False)
        for i in range(len(dataset)):
            pixels, _, error, _, _ = dataset[i]
            assert error is None and pixels.shape == (32, 32, 3) and pixels.dtype == torch.uint8


def test_file_broken_after_scan_is_dropped_from_its_batch(class_folder: Path) -> None:
    dm = _module(class_folder)
    victim = dm.data.split("valid")[0].path
    victim.write_bytes(victim.read_bytes()[:40])  # truncated after the audit read it
    loader = dm.eval_dataloader("valid")
    batch = next(iter(loader))
    assert len(batch.pixels) == len(batch.targets) == 5
    [(index, reason)] = batch.failures
    assert loader.dataset.path(index) == str(victim) and reason


def test_augmentation_repeats_per_seed_and_epoch(class_folder: Path) -> None:
    dm = _module(class_folder)
    loader = dm.train_dataloader()

    def epoch(e: int) -> torch.Tensor:
        loader.sampler.set_epoch(e)
        return torch.cat([batch.pixels for batch in loader])

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_same_data_with_workers(class_folder: Path) -> None:
    plain = _module(class_folder).train_dataloader()
    workers = _module(class_folder, num_workers=2, persistent_workers=True).train_dataloader()
    plain.sampler.set_epoch(3)
    workers.sampler.set_epoch(3)
    assert torch.equal(torch.cat([b.pixels for b in plain]), torch.cat([b.pixels for b in workers]))


def test_sampler_shards_cover_everything_once() -> None:
    shards = [list(EpochSampler(10, seed=0, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert sorted(i for shard in shards for i, _ in shard) == list(range(10))
    padded = [len(EpochSampler(10, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert padded == [4, 4, 4]


def test_balanced_sampler_evens_out_classes() -> None:
    targets = [0] * 90 + [1] * 10
    sampler = EpochSampler(100, seed=0, weights=balanced_weights(targets))
    drawn = [targets[i] for _ in range(20) for i, _ in (sampler.set_epoch(_) or sampler)]
    assert 0.4 < sum(drawn) / len(drawn) < 0.6


def test_dataset_holds_no_decoded_images(class_folder: Path) -> None:
    dataset = _module(class_folder).dataset("train")
    assert dataset.items.dtype.kind == "U" and dataset.targets.dtype == "int64"
    assert not any(isinstance(v, Image.Image) for v in vars(dataset).values())


def test_default_workers_leave_a_cpu_model_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stated policy, for every machine size: with a GPU, every core but one (at most 8); on a CPU, none
    on small machines (up to 4 cores: the model's threads need them all), else a quarter of the cores (at most 8)."""
    for cpus in range(1, 129):
        monkeypatch.setattr(loader_module, "available_cpus", lambda cpus=cpus: cpus)
        gpu, cpu = default_num_workers(gpu=True), default_num_workers(gpu=False)
        assert gpu == min(8, cpus - 1), cpus
        assert cpu == (0 if cpus <= 4 else min(8, cpus // 4)), cpus
        assert cpu <= cpus // 4 and gpu < cpus  # never every core
