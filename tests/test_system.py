"""The machine facts defaults depend on: the inference batch rule reproduces the batches measured fastest."""

from __future__ import annotations

import pytest
import torch

from visiontune.data.loader import ImageItems
from visiontune.data.transforms import Preprocessing
from visiontune.inference import Inference
from visiontune.system import evaluation_batch_size, inference_batch_size


@pytest.mark.parametrize(("side", "best"), [(64, 64), (96, 16), (160, 8), (224, 4)])
def test_cpu_batch_is_the_one_measured_fastest_on_two_threads(side: int, best: int) -> None:
    # bench/inference_batch.py on the 2-core VM (RESULTS.md): the fastest batch at each size.
    assert inference_batch_size("cpu", (side, side), threads=2) == best


def test_cpu_batch_shrinks_with_pixels_and_grows_with_threads() -> None:
    sides = [16, 28, 48, 64, 96, 128, 160, 224, 320, 448, 1024]
    for threads in (1, 2, 8, 64):
        batches = [inference_batch_size("cpu", (s, s), threads=threads) for s in sides]
        assert batches == sorted(batches, reverse=True)
        assert all(1 <= b <= 256 and b & (b - 1) == 0 for b in batches)  # powers of two within bounds
    for side in (96, 224):
        by_threads = [inference_batch_size("cpu", (side, side), threads=t) for t in (1, 2, 4, 8)]
        assert by_threads == sorted(by_threads) and by_threads[-1] > by_threads[0]
    assert inference_batch_size("cpu", (4000, 3000), threads=2) == 1
    assert inference_batch_size("cpu", (1, 1), threads=2) == 256
    assert inference_batch_size("cpu", (64, 256), threads=2) == inference_batch_size("cpu", (128, 128), threads=2)


def test_gpu_batch_ignores_size() -> None:
    assert inference_batch_size("cuda", (64, 64)) == inference_batch_size("cuda", (512, 512)) == 128


def test_inference_loader_sizes_batches_for_its_image_size() -> None:
    model = torch.nn.Conv2d(3, 2, 1)
    dataset = ImageItems([torch.zeros(3, 8, 8)] * 3, lambda image: torch.zeros(3, 8, 8))
    small = Inference.create(model, Preprocessing(96, (0.5,) * 3, (0.5,) * 3), device="cpu")
    large = Inference.create(model, Preprocessing(224, (0.5,) * 3, (0.5,) * 3), device="cpu")
    threads = torch.get_num_threads()
    assert small.loader(dataset).batch_size == inference_batch_size("cpu", (96, 96), threads)
    assert large.loader(dataset).batch_size == inference_batch_size("cpu", (224, 224), threads)
    assert small.loader(dataset).batch_size > large.loader(dataset).batch_size
    assert large.loader(dataset, batch_size=3).batch_size == 3


def test_evaluation_batch_is_inference_sized_on_a_cpu_and_never_below_training_on_a_gpu() -> None:
    assert evaluation_batch_size("cpu", (96, 96), 64, 2) == inference_batch_size("cpu", (96, 96), 2) == 16
    assert evaluation_batch_size("cpu", (32, 32), 8, 2) == 256  # not tied to training's batch either way
    assert evaluation_batch_size("cuda", (96, 96), 64, 2) == 128
    assert evaluation_batch_size("cuda", (96, 96), 512, 2) == 512
