"""Feature-extraction throughput: `extract_features` against a plain timm forward loop, same images.

The reference is what a careful user would write: timm's `tf_efficientnet_lite0` with global
average pooling and no classifier (`num_classes=0`), our backbone's ImageNet weights loaded into
it, the images already decoded, resized and normalised in memory as one tensor, and
`model(batch)` under `torch.inference_mode`, in the same batches and channels-last layout as
`extract_features` uses (both matter far more than the pipeline: see `system.inference_batch_size`).
`extract_features` reads the PNG files itself (read, sha256, decode, resize, normalise) and pools
the backbone's feature maps, with the feature cache off so every image is embedded. Each side is
timed after one warm-up batch, and the runs alternate, keeping each side's best (a shared CPU
only slows runs down).

Usage:
    python bench/features_throughput.py                   # 1,024 images at 224 px
    python bench/features_throughput.py --images 512 --workers 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import timm
import torch
from common import alternate, print_ratio

from visiontune.data.demo import export_dataset
from visiontune.data.images import open_image
from visiontune.data.transforms import build_transform
from visiontune.features import extract_features
from visiontune.models import create_classifier
from visiontune.system import available_cpus, inference_batch_size


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reference(images: torch.Tensor, backbone_state: dict, batch_size: int, *, channels_last: bool = True) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    model.load_state_dict(backbone_state)
    model = model.to(device, memory_format=layout).eval()
    with torch.inference_mode():
        model(images[:batch_size].to(device, memory_format=layout))  # warm-up
        _sync()
        start = time.perf_counter()
        for i in range(batch_size, len(images), batch_size):
            model(images[i : i + batch_size].to(device, memory_format=layout)).cpu()
        _sync()
    return (len(images) - batch_size) / (time.perf_counter() - start)


def ours(paths: list[Path], model: torch.nn.Module, batch_size: int, workers: int | None) -> float:
    extract_features(paths[:batch_size], model, cache=False, batch_size=batch_size)  # warm-up
    result = extract_features(paths[batch_size:], model, cache=False, batch_size=batch_size, num_workers=workers)
    return result.images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None, help="default: extract_features' own choice")
    parser.add_argument("--workers", type=int, default=None, help="default: extract_features' own choice")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({available_cpus()} cores)"
    batch = args.batch_size or inference_batch_size("cuda" if gpu else "cpu", (args.image_size, args.image_size))
    model = create_classifier("efficientnet_lite0", 10, image_size=args.image_size)
    state = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        export_dataset("fashion-mnist", Path(tmp) / "fm")
        paths = sorted((Path(tmp) / "fm" / "train").rglob("*.png"))[: args.images]
        transform = build_transform(model.preprocessing)
        images = torch.stack([transform(open_image(p)) for p in paths])  # (N, 3, H, W), in memory
        refs, ourss = alternate(
            args.repeats, lambda: reference(images, state, batch), lambda: ours(paths, model, batch, args.workers)
        )
        naive = reference(images, state, 64, channels_last=False)
    print(f"device: {device}; torch {torch.__version__}, timm {timm.__version__}")
    print(f"efficientnet_lite0, {args.image_size} px, batch {batch}, channels-last, {args.images} Fashion-MNIST PNGs")
    print(f"for context, the reference in NCHW, batch 64: {naive:6.1f} images/s")
    print_ratio(("reference (timm forward, tensors in memory)", refs), ("extract_features (files, no cache)", ourss))


if __name__ == "__main__":
    main()
