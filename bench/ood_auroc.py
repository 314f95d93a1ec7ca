"""Unknown detection on images of none of the classes: AUROC and FPR at 95% TPR of every unknown score.

Scores: max softmax probability (msp), energy, and the feature-space k-NN score (knn: cosine
similarity to the 10th nearest training embedding; bundles trained since it exists). `--refit`
fits the k-NN detector again as training now does (its embedding layout: "stages" for a
fine-tuned model, see src/visiontune/embedding.py), e.g. to measure a run trained before.

Builds an out-of-distribution folder (the "existing" one) from two sources the Fashion-MNIST model never saw:
- scikit-learn's `load_digits` (8x8 handwritten digits, white on black like Fashion-MNIST)
  upsampled to 28x28 grayscale, `--digits` per digit;
- scikit-image's sample photos (astronaut, coffee, chelsea the cat, a rocket, coins, text...):
  each whole photo and `--crops` random square crops, converted to 28x28 grayscale, plus each
  colour photo kept in RGB (28x28).

and a second, separate source from other real images packages ship (`--second`):
- scikit-image's `lfw_subset` faces (25x25 grey, 100 faces), to 28x28;
- random square crops of scikit-learn's two sample photos (a temple in China, a flower), 28x28
  grey and RGB.

Then evaluates a copy of the run (without checkpoints) on its test split with that folder as
`--ood`, through the Python API that `visiontune evaluate RUN DATA --ood FOLDER` calls (the
acceptance figure: AUROC >= 0.8), and splits the same OOD scores by source for the breakdown.
A bundle trained before calibration existed stores no unknown threshold; its copy is then
calibrated as training now does (temperature and thresholds fitted on the run's validation
split), so the shares flagged unknown can be reported too. The AUROC needs no threshold.

Usage:
    python bench/ood_auroc.py --run runs/demo --data demo
    python bench/ood_auroc.py --run runs/demo --data demo --work /tmp/ood-bench --keep
    python bench/ood_auroc.py --run runs/demo --data demo --refit
    python bench/ood_auroc.py --run runs/demo --data demo --refit --bank-cap 1000   # a smaller bank
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
SIDE = 28  # Fashion-MNIST's size


def write_digits(folder: Path, per_digit: int) -> int:
    """The first `per_digit` images of each digit, 8x8 (0..16) -> 28x28 grayscale PNGs."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for digit in range(10):
        for k, index in enumerate(np.flatnonzero(digits.target == digit)[:per_digit]):
            pixels = (digits.images[index] * (255 / 16)).round().astype(np.uint8)
            Image.fromarray(pixels).resize((SIDE, SIDE), Image.BILINEAR).save(folder / f"digit{digit}_{k:03d}.png")
            written += 1
    return written


def write_photos(folder: Path, crops: int, seed: int = 0) -> int:
    """Each sample photo whole and in `crops` random square crops, 28x28 grayscale; colour ones also in RGB."""
    import skimage.data

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for name in PHOTOS:
        try:
            image = _as_pil(getattr(skimage.data, name)())
        except Exception as exc:  # a photo this scikit-image needs to download: skip it
            print(f"skipping {name}: {type(exc).__name__}", file=sys.stderr)
            continue
        views = [image] + [_random_crop(image, rng) for _ in range(crops)]
        for k, view in enumerate(views):
            view.convert("L").resize((SIDE, SIDE), Image.BICUBIC).save(folder / f"{name}_gray{k:02d}.png")
        written += len(views)
        if image.mode == "RGB":
            image.resize((SIDE, SIDE), Image.BICUBIC).save(folder / f"{name}_rgb.png")
            written += 1
    return written


def _as_pil(array: np.ndarray) -> Image.Image:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    return Image.fromarray(array.astype(np.uint8))


def _random_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A square crop of 25-60% of the shorter side, anywhere in the photo."""
    width, height = image.size
    side = int(min(width, height) * rng.uniform(0.25, 0.6))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    return image.crop((left, top, left + side, top + side))


def write_second_source(folder: Path, crops: int, seed: int = 1) -> int:
    """Faces from skimage's lfw_subset and crops of sklearn's sample photos, 28x28: the second OOD source."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    faces = skimage.data.lfw_subset()[:100]  # the first 100 are faces
    for k, face in enumerate(faces):
        pixels = (face * 255).round().astype(np.uint8)
        Image.fromarray(pixels).resize((SIDE, SIDE), Image.BICUBIC).save(folder / f"face_{k:03d}.png")
    written = len(faces)
    for index, photo in enumerate(load_sample_images().images):
        image = Image.fromarray(photo)
        for k in range(crops):
            view = _random_crop(image, rng).resize((SIDE, SIDE), Image.BICUBIC)
            (view if k % 2 else view.convert("L")).save(folder / f"sample{index}_{k:03d}.png")
        written += crops
    return written


def copy_run(run: Path, dest: Path) -> Path:
    """The run folder without its checkpoints: the bundle, splits.csv, config and history."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    return dest


def calibrate_if_needed(run: Path, data: str, work: Path, *, refit: bool = False, bank_cap: int | None = None) -> str:
    """Fit what training now fits at its end (temperature, thresholds, conformal sets, the k-NN detector) on
    the run's own splits, when the bundle predates it: the same functions `finish` calls, on the kept weights."""
    import torch

    from visiontune.bundle import load_bundle, save_bundle
    from visiontune.calibration import calibrate
    from visiontune.data.loader import ImageItems
    from visiontune.data.transforms import pixel_transform
    from visiontune.detector import BANK_CAP, bank_rows, fit_knn
    from visiontune.embedding import default_layout, logits_and_embeddings
    from visiontune.inference import Inference
    from visiontune.runs.folder import RunFolder

    bank_cap = bank_cap or BANK_CAP
    model, meta = load_bundle(run / "model")
    if meta.calibration.conformal is not None and meta.calibration.detector is not None and not refit:
        return f"the bundle's own (fitted at the end of training; {meta.calibration.detector.embedding} embedding)"
    folder = RunFolder(run)
    runner = Inference.create(model, model.preprocessing, device="cpu")
    layout = default_layout(model)
    forward, k = logits_and_embeddings(model, layout), len(meta.classes)

    def outputs(split: str, cap: int | None = None) -> tuple[torch.Tensor, list[str]]:
        rows = [(p, label) for p, label in folder.split_files(split, data_root=meta.training.get("data_root"),
                                                              data=Path(data)) if p is not None]  # fmt: skip
        if cap is not None:
            rows = [rows[i] for i in bank_rows(len(rows), cap=cap, seed=42)]
        dataset = ImageItems([p for p, _ in rows], pixel_transform(model.preprocessing))
        scored = runner.outputs(runner.loader(dataset), forward=forward)
        return scored.outputs, [rows[i][1] for i in scored.indices.tolist()]

    valid, labels = outputs("valid")
    targets = torch.tensor([meta.classes.index(label) for label in labels])
    calibration = calibrate(valid[:, :k], targets)
    detector = fit_knn(outputs("train", bank_cap)[0][:, k:], cap=bank_cap, seed=42, embedding=layout)
    calibration = calibration.with_detector(detector, valid[:, k:])
    save_bundle(run / "model", model, dataclasses.replace(meta, calibration=calibration))
    return (f"fitted here as training's finish does, on the run's {len(targets)} validation images and "
            f"{len(detector.bank)} training embeddings, {layout} layout, {detector.dim} dimensions "
            f"(T = {calibration.temperature:.3f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a run folder trained on Fashion-MNIST")
    parser.add_argument("--data", required=True, help="its data folder (the test split is scored)")
    parser.add_argument("--digits", type=int, default=20, help="digits of each kind (10 kinds)")
    parser.add_argument("--crops", type=int, default=8, help="random crops per photo")
    parser.add_argument("--second-crops", type=int, default=50, help="crops per sklearn sample photo (second source)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--refit", action="store_true", help="fit calibration and detector again, as training now does")
    parser.add_argument(
        "--bank-cap",
        type=int,
        default=None,
        help="with --refit: at most this many training embeddings in the bank (default: training's)",
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ood-bench-"))
    try:
        run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    import torch

    from visiontune.evaluation.evaluate import EvalConfig, evaluate
    from visiontune.evaluation.ood import ood_metrics
    from visiontune.predict import Predictor

    digits, photos = (
        write_digits(work / "ood" / "digits", args.digits),
        write_photos(work / "ood" / "photos", args.crops),
    )
    second = write_second_source(work / "ood" / "second", args.second_crops)
    print(f"OOD images: {digits} digits, {photos} photos (the existing folder); {second} faces and sample-photo crops")
    run_copy = copy_run(args.run, work / "run")
    print(f"calibration: {calibrate_if_needed(run_copy, args.data, work, refit=args.refit, bank_cap=args.bank_cap)}")
    print(f"command: visiontune evaluate {run_copy} {args.data} --ood {work / 'ood'} --out {work / 'eval'}")
    result = evaluate(run_copy, args.data, EvalConfig(ood=str(work / "ood"), out=str(work / "eval")))
    calibration = Predictor.load(run_copy, device="cpu").calibration  # with the k-NN bank, when it has one
    rows = {}
    sources = {"existing (digits + photos)": ("/ood/digits/", "/ood/photos/"), "digits": ("/ood/digits/",),
               "photos": ("/ood/photos/",), "second (faces + sample crops)": ("/ood/second/",)}  # fmt: skip
    for source, parts in sources.items():  # the same OOD outputs, split by where the images came from
        keep = torch.tensor([any(part in path for part in parts) for path in result.ood_paths])
        unknown_embeddings = None if result.ood_embeddings is None else result.ood_embeddings[keep]
        rows[source] = ood_metrics(result.logits, result.ood_logits[keep], calibration,
                                   (result.embeddings, unknown_embeddings))  # fmt: skip
    print(f"\ntest accuracy {result.metrics['accuracy']:.4f} on {result.metrics['images']} images;"
          f" the bundle's default unknown score: {calibration.score}")  # fmt: skip
    scores = list(rows["digits"]["auroc_by_score"])
    print("| OOD source | images | " + " | ".join(f"AUROC ({s})" for s in scores) + " | "
          + " | ".join(f"FPR@95%TPR ({s})" for s in scores) + " | OOD flagged | test flagged |")  # fmt: skip
    print("|---|---:|" + "---:|" * (2 * len(scores) + 2))
    for source, ood in rows.items():
        aurocs = " | ".join(f"{ood['auroc_by_score'][s]:.3f}" for s in scores)
        fprs = " | ".join(f"{ood['fpr_at_95_tpr_by_score'][s]:.3f}" for s in scores)
        print(f"| {source} | {ood['images']} | {aurocs} | {fprs} | {_pct(ood['flagged_ood'])} "
              f"| {_pct(ood['flagged_in'])} |")  # fmt: skip
    if args.keep:
        print(f"\nreport: {result.report}")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    main()
