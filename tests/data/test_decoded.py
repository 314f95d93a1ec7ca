"""Decode once: later epochs open no image file, a changed file is decoded again, a damaged cache is ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos

from visiontune.config import AugmentConfig, LoaderConfig
from visiontune.data import decoded as decoded_module
from visiontune.data import loader as loader_module
from visiontune.data.datamodule import DataModule
from visiontune.data.dataset import load_data
from visiontune.data.decoded import DecodedCache, decoded_cache, presized
from visiontune.data.images import open_image
from visiontune.data.transforms import Preprocessing, build_transform, normalize_batch, pixel_transform

PRE = Preprocessing(image_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an empty cache (the photos are the same bytes in every test)."""
    monkeypatch.setenv("VISIONTUNE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Two classes of 8 real photo crops each, saved as 120x90 JPEGs (bigger than the cache keeps)."""
    for name, photo in (("cat", photos.chelsea()), ("coffee", photos.coffee())):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for k in range(8):
            crop = photo[10 * k : 10 * k + 240, 15 * k : 15 * k + 320]
            Image.fromarray(crop).resize((120, 90)).save(tmp_path / "photos" / name / f"{k}.jpg", quality=90)
    return tmp_path / "photos"


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times the loader (each epoch) and the cache's fill (once) decoded a file."""
    counts = {"loader": 0, "fill": 0}
    for where, module in (("loader", loader_module), ("fill", decoded_module)):
        real = module.open_image

        def counted(*args: object, _real: object = real, _where: str = where, **kwargs: object) -> Image.Image:
            counts[_where] += 1
            return _real(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(module, "open_image", counted)
    return counts


def _module(root: Path, *, decode_once: bool = True, augment: str = "standard") -> DataModule:
    cfg = LoaderConfig(batch_size=4, num_workers=0)
    return DataModule(load_data(root), PRE, AugmentConfig.preset(augment), cfg, seed=1, decode_once=decode_once)


def _epoch(dm: DataModule, epoch: int) -> torch.Tensor:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return torch.cat([batch.pixels for batch in loader])


def test_every_epoch_after_the_fill_opens_no_image_file(photo_folder: Path, decodes: dict[str, int]) -> None:
    dm = _module(photo_folder)
    train, valid = len(dm.data.split("train")), len(dm.data.split("valid"))
    first, second = _epoch(dm, 0), _epoch(dm, 1)
    dm.eval_dataloader("valid")
    batches = list(dm.eval_dataloader("valid"))
    assert decodes == {"loader": 0, "fill": train + valid}  # each file decoded once, in the fill
    assert first.shape == second.shape == (train - train % 4, 3, 32, 32)
    assert not torch.equal(first, second)  # the random crops and flips still change every epoch
    assert sum(len(b) for b in batches) == valid


def test_unaugmented_training_reads_the_evaluation_pixels(photo_folder: Path, decodes: dict[str, int]) -> None:
    """`--augment none` (fine-tuning's default): nothing random per epoch, so no per-epoch resize either."""
    dm = _module(photo_folder, augment="none")
    train, valid = len(dm.data.split("train")), len(dm.data.split("valid"))
    for epoch in (0, 1):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            assert batch.pixels.dtype == torch.uint8 and batch.pixels.shape[1:] == (32, 32, 3)
            for row, index in zip(batch.pixels, batch.indices.tolist(), strict=True):
                path = dm.dataset("train").path(index)
                expected = build_transform(PRE)(open_image(path))  # what training normalised before
                torch.testing.assert_close(normalize_batch(row[None], PRE)[0], expected, atol=1e-6, rtol=0)
    list(dm.eval_dataloader("valid"))
    assert decodes["loader"] == 0 and decodes["fill"] == train + valid  # one cache serves training and validation
    assert list(dm._caches) == [False]


def test_validation_reads_exactly_the_pixels_it_would_decode(photo_folder: Path) -> None:
    cached = list(_module(photo_folder).eval_dataloader("valid"))
    plain = list(_module(photo_folder, decode_once=False).eval_dataloader("valid"))
    assert torch.equal(torch.cat([b.pixels for b in cached]), torch.cat([b.pixels for b in plain]))


def test_a_changed_file_is_decoded_again(photo_folder: Path, decodes: dict[str, int]) -> None:
    dm = _module(photo_folder)
    _epoch(dm, 0)
    victim = dm.data.split("train")[0].path
    Image.fromarray(photos.astronaut()[:300, :400]).resize((120, 90)).save(victim)  # other content, same name
    dataset = dm.dataset("train")
    position = [Path(p) for p in dataset.items].index(victim)
    before = dict(decodes)
    dataset[position]
    assert decodes["loader"] == before["loader"] + 1  # the stale pixels are not used: the new bytes are decoded
    _module(photo_folder).dataset("train")  # the next run's scan sees the new content and caches it
    assert decodes["fill"] == before["fill"] + 1
    digest = decoded_module.file_digest(victim.read_bytes())
    assert dm._caches[True].get(digest) is None and DecodedCache(dm._caches[True].recipe, presized((32, 32))).get(
        digest
    ).shape == (40, 53, 3)


def test_presized_images_cover_a_little_more_than_the_training_size() -> None:
    shrink = presized((32, 32))
    assert shrink(Image.new("RGB", (120, 90))).shape == (40, 53, 3)  # 1.25 x 32 = 40 on the short side
    assert shrink(Image.new("RGB", (28, 28))).shape == (28, 28, 3)  # never enlarged


def test_a_damaged_or_half_written_shard_is_ignored_and_decoded_again(photo_folder: Path, tmp_path: Path) -> None:
    paths = sorted(photo_folder.rglob("*.jpg"))[:6]
    cache = decoded_cache(PRE, train=True, draft_size=(64, 64))
    cache.root = tmp_path / "cache"
    cache.folder = cache.root / cache.folder.name
    assert cache.fill(paths[:3]) == 3 and cache.fill(paths) == 3  # the second fill only adds what is new
    blobs = sorted(cache.folder.glob("*.pixels"))
    with open(blobs[0], "r+b") as f:  # a blob cut short (a disk filled up, a copy interrupted)
        f.truncate(100)
    (cache.folder / "00-junk.index.safetensors").write_bytes(b"not a safetensors file")
    (cache.folder / "01-orphan.pixels").write_bytes(b"\0" * 10)  # a blob whose index was never written
    fresh = DecodedCache(cache.recipe, cache.pixels, root=cache.root)
    assert len(fresh) == 3  # the other shard still serves its images
    assert fresh.fill(paths) == 3 and len(fresh) == 6
    digests = [decoded_module.file_digest(p.read_bytes()) for p in paths]
    assert all(fresh.get(d) is not None for d in digests)
    assert not list(cache.folder.glob("*.tmp*"))  # nothing half-written left under a final name


def test_final_pixels_equal_the_evaluation_pipeline(photo_folder: Path, tmp_path: Path) -> None:
    path = sorted(photo_folder.rglob("*.jpg"))[0]
    cache = decoded_cache(PRE, train=False)
    cache.fill([path])
    stored = cache.get(decoded_module.file_digest(path.read_bytes()))
    assert stored is not None and cache.final
    expected = pixel_transform(PRE)(loader_module.open_image(path)).numpy()
    np.testing.assert_array_equal(stored, expected)
