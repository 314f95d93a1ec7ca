"""Training throughput: our Trainer against a plain PyTorch loop, same model, batch and image size.

The reference is the loop a careful user would write: the same Classifier, AdamW, images already
decoded, resized and normalised in memory as one tensor, forward / backward / step, no
augmentation. Our Trainer reads the PNG files through its DataModule (decode, resize, the `none`
augmentation preset) with worker processes, runs Accelerate, the one-cycle schedule, gradient
clipping and the callbacks. Both train every layer; both are timed after a warm-up.

Usage:
    python bench/train_throughput.py                          # CPU, fp32, 112 px, batch 64
    python bench/train_throughput.py --precision bf16 --channels-last   # on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import alternate, print_ratio

from visiontune.config import AugmentConfig, DataConfig, FinetuneConfig, LoaderConfig
from visiontune.data.datamodule import DataModule
from visiontune.data.dataset import load_data
from visiontune.data.demo import export_dataset
from visiontune.data.transforms import normalize_batch
from visiontune.models import create_classifier
from visiontune.system import available_cpus
from visiontune.training.events import Callback
from visiontune.training.trainer import Trainer


class StepTimer(Callback):
    """Time from the end of warm-up batch `skip` to the end of the last training batch, counting images.

    The validation pass and checkpoint after the epoch are left out, as the reference has neither.
    """

    def __init__(self, skip: int) -> None:
        self.skip, self.batches, self.images, self.start, self.end = skip, 0, 0, 0.0, 0.0

    def after_batch(self, trainer: Trainer, loss: float, batch_size: int) -> None:
        self.batches += 1
        _sync()
        if self.batches == self.skip:
            self.start = time.perf_counter()
        elif self.batches > self.skip:
            self.images += batch_size
            self.end = time.perf_counter()

    def rate(self) -> float:
        return self.images / (self.end - self.start)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ours(data_dir: Path, args: argparse.Namespace) -> float:
    config = FinetuneConfig(epochs=1, batch_size=args.batch_size, channels_last=args.channels_last)
    data = load_data(data_dir / "train", DataConfig(valid_pct=0.05))
    model = create_classifier("efficientnet_lite0", len(data.classes), image_size=args.image_size)
    loader = LoaderConfig(batch_size=args.batch_size, num_workers=args.workers)
    dm = DataModule(data, model.preprocessing, AugmentConfig.preset("none"), loader)
    timer = StepTimer(skip=args.warmup)
    trainer = Trainer(model, dm, config, precision=args.precision, callbacks=[timer])
    trainer.fit(epochs=1, lr=1e-3)
    return timer.rate()


def reference(data_dir: Path, args: argparse.Namespace) -> float:
    data = load_data(data_dir / "train", DataConfig(valid_pct=0.05))
    model = create_classifier("efficientnet_lite0", len(data.classes), image_size=args.image_size)
    dm = DataModule(data, model.preprocessing, AugmentConfig.preset("none"), LoaderConfig(num_workers=0))
    dataset = dm.dataset("train", train=False)
    pixels = torch.stack([dataset[i][0] for i in range(len(dataset))])  # (N, H, W, 3) uint8
    images = normalize_batch(pixels, model.preprocessing).contiguous()  # (N, 3, H, W), in memory
    targets = torch.as_tensor(dataset.targets)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = len(images) // args.batch_size
    for step in range(steps):
        if step == args.warmup:
            _sync()
            start = time.perf_counter()
        batch = images[step * args.batch_size : (step + 1) * args.batch_size].to(device)
        if args.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            target = targets[step * args.batch_size : (step + 1) * args.batch_size].to(device)
            loss = F.cross_entropy(model(batch), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync()
    return (steps - args.warmup) * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=112)  # what `visiontune train` picks for 28 px images
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({available_cpus()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fm"
        export_dataset("fashion-mnist", data)
        refs, ourss = alternate(args.repeats, lambda: reference(data, args), lambda: ours(data, args))
    print(f"device: {device}; torch {torch.__version__}")
    print(f"efficientnet_lite0, {args.image_size} px, batch {args.batch_size}")
    print(f"precision {args.precision}, channels_last {args.channels_last}; 2,850 training images (bundled subset)")
    print_ratio(("reference (plain loop, tensors in memory)", refs), ("visiontune Trainer (files, DataModule)", ourss))


if __name__ == "__main__":
    main()
