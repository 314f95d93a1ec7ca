"""Prediction throughput: `Predictor.predict` on image files against a plain timm loop, same model and files.

The files: 1,000 JPEG photos (scikit-image's bundled photographs, cut and scaled to 320-640 px
sides, as phone pictures reduced for upload would be) or, with `--data fashion`, the bundled
28 px Fashion-MNIST PNGs. The model: a 10-class efficientnet_lite0 bundle at 224 px (ImageNet
backbone weights, fresh head; what it predicts doesn't matter here, only how fast).

The reference is the loop a careful user writes with timm alone: `timm.create_model(
"tf_efficientnet_lite0", num_classes=10)` holding the same weights, for each batch of paths
PIL `open` + `convert("RGB")` + torchvision's Resize / ToImage / ToDtype / Normalize per image,
`torch.stack`, `model(batch).softmax(1)` under `inference_mode`, in the same batch size and
channels-last layout as the Predictor picks (both matter more than the pipeline). For context
the same loop in batches of 32 in PyTorch's default layout is also timed. Runs alternate; each
side's best is kept.

Usage:
    python bench/predict_throughput.py                  # 1,000 photos
    python bench/predict_throughput.py --data fashion   # 1,000 small PNGs
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from common import alternate, print_ratio
from PIL import Image
from skimage import data as skdata
from torchvision.transforms import InterpolationMode, v2

from visiontune.bundle import BundleMeta, save_bundle
from visiontune.data.demo import export_dataset
from visiontune.models import create_classifier
from visiontune.predict import Predictor
from visiontune.system import available_cpus, inference_batch_size

PHOTOS = (
    "chelsea",
    "coffee",
    "astronaut",
    "rocket",
    "colorwheel",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
)


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs: random crops of scikit-image's photos, scaled so the longer side is 320-640 px."""
    rng = np.random.default_rng(seed)
    sources = [getattr(skdata, name)() for name in PHOTOS]
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        photo = sources[i % len(sources)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        image = Image.fromarray(photo[y : y + ch, x : x + cw]).convert("RGB")
        side = int(rng.integers(320, 641))
        image = image.resize((side, int(side * image.height / image.width)))
        path = folder / f"{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def reference(paths: list[Path], state: dict, batch_size: int, *, channels_last: bool = True) -> float:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    model.load_state_dict(state)
    model = model.to(memory_format=layout).eval()
    transform = v2.Compose(
        [
            v2.Resize((224, 224), interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )

    def run(chunk: list[Path]) -> None:
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in chunk])
        model(batch.contiguous(memory_format=layout)).softmax(1)

    with torch.inference_mode():
        run(paths[:batch_size])  # warm-up
        start = time.perf_counter()
        for i in range(batch_size, len(paths), batch_size):
            run(paths[i : i + batch_size])
    return (len(paths) - batch_size) / (time.perf_counter() - start)


def ours(paths: list[Path], predictor: Predictor, batch_size: int) -> float:
    predictor.predict(paths[:batch_size], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    predictor.predict(paths[batch_size:], batch_size=batch_size)
    return (len(paths) - batch_size) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("photos", "fashion"), default="photos")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_classifier("efficientnet_lite0", 10, image_size=224, resize_mode="squish")
    assert model.preprocessing.interpolation == "bicubic" and model.preprocessing.mean == (0.5,) * 3  # as the reference
    batch = inference_batch_size("cpu", model.preprocessing.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data == "photos":
            paths = write_photos(Path(tmp) / "photos", args.images)
        else:
            export_dataset("fashion-mnist", Path(tmp) / "fm")
            paths = sorted((Path(tmp) / "fm").rglob("*.png"))[: args.images]
        meta = BundleMeta(arch=model.arch, classes=[str(i) for i in range(10)], preprocessing=model.preprocessing)
        predictor = Predictor.load(save_bundle(Path(tmp) / "bundle", model, meta), device="cpu")
        state = _timm_state(model)
        refs, ourss = alternate(
            args.repeats, lambda: reference(paths, state, batch), lambda: ours(paths, predictor, batch)
        )
        naive = reference(paths, state, 32, channels_last=False)
    print(f"device: CPU ({available_cpus()} cores); torch {torch.__version__}, timm {timm.__version__}")
    print(f"efficientnet_lite0 bundle, 224 px, batch {batch}, channels-last; {len(paths)} files ({args.data})")
    print(f"for context, the reference in batches of 32, default layout: {naive:.1f} images/s")
    print_ratio(("reference (timm + PIL + torchvision loop)", refs), ("Predictor.predict (files)", ourss))


def _timm_state(model: torch.nn.Module) -> dict:
    """Our Classifier's weights under timm's own names: the backbone's as they are, our head's as timm's classifier."""
    state = {k.removeprefix("backbone."): v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    state["classifier.weight"] = model.head.fc.weight.detach().clone()
    state["classifier.bias"] = model.head.fc.bias.detach().clone()
    return state


if __name__ == "__main__":
    main()
