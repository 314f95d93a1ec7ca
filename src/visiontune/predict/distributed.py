"""Prediction and embedding past one machine: a Ray Data pipeline over many workers.

    paths (listed by the driver, minus those already written)
      -> read + decode + resize with the bundle's own preprocessing (`model_inputs`): CPU tasks
         beside GPU workers; inside each worker when workers are CPUs (Ray fuses the two stages,
         so pixels never cross the object store and decoding can't starve for a CPU)
      -> an actor pool: each worker loads the model once and runs batches on its CPU or GPU
         (`Predictor.predict_pixels`, torch or onnx; or the frozen backbone's pooled embedding)
         and writes each batch as one Parquet shard (`shards.Shards`, exactly once)
      -> the driver: only paths and counts come back, for the progress bar

Ray does the scheduling, streaming, back-pressure and retries: a worker process that dies is
restarted and its batch run again, and the shard it may already have written is replaced by the
same rows under the same name. A job that stops (Ctrl-C, a lost head node) is finished by running
it again: the paths already in the output folder are skipped. Rows are the ones
`visiontune predict --format json` gives for the same files, built by the same code.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from visiontune.config import ModelConfig, check_choice
from visiontune.data.images import DEFAULT_MAX_PIXELS
from visiontune.data.transforms import Preprocessing
from visiontune.errors import ConfigError, MissingPackageError
from visiontune.predict.locations import UrlItems
from visiontune.predict.shards import EMBEDDING_SCHEMA, Shards, prediction_table
from visiontune.system import inference_batch_size

log = logging.getLogger(__name__)

BLOCK_BATCHES = 4  # paths per Ray block, in batches: enough blocks to spread, few enough to stay cheap
DECODE_CPUS = 1.0  # each decoding task's CPU share beside GPU workers
PRECISIONS_ON_GPU = "bf16"  # embed's `precision="auto"` on GPU workers (recorded in the feature cache's recipe)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a job runs.

    `address`: "auto" joins the cluster this machine is part of (`ray start`), or starts a local
    one; otherwise a head node's `host:port` (or `ray://host:10001`). `concurrency`: model workers
    (default: every GPU's share, or every CPU's). `batch_size`: images per Ray batch and per
    Parquet shard (default 128 on GPU workers, 64 on CPU ones); a CPU worker runs each batch
    through the model in smaller passes, the size that runs fastest on its threads at the model's
    image size (`system.inference_batch_size`), so shards and Ray's per-batch costs stay few.
    """

    address: str = "auto"
    concurrency: int | None = None
    num_gpus_per_worker: float = 0.0
    num_cpus_per_worker: float = 1.0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1. Received: {self.concurrency}")
        if self.num_gpus_per_worker < 0 or self.num_cpus_per_worker <= 0:
            raise ConfigError("--num-gpus-per-worker must be at least 0 and --num-cpus-per-worker above 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1. Received: {self.batch_size}")

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus_per_worker > 0 else "cpu"

    def batch(self) -> int:
        return self.batch_size or (128 if self.num_gpus_per_worker > 0 else 64)

    def forward_batch(self, threads: int, image_size: tuple[int, int]) -> int:
        """Images per forward pass in a worker: the whole batch on a GPU, what fits a CPU's cache on a CPU."""
        if self.num_gpus_per_worker > 0:
            return self.batch()
        return min(self.batch(), inference_batch_size("cpu", image_size, threads))


@dataclass
class Decoding:
    """How a worker gets pixels: in passes of `step` images, decoding them itself when `preprocessing` is set.

    CPU workers decode their own batches (no pixels cross the object store), one pass ahead in a
    thread while the model runs on the current one, so decoding overlaps the forward passes as a
    DataLoader's workers do for single-process `predict`; GPU workers get pixels from CPU tasks.
    """

    step: int  # images per forward pass
    preprocessing: Preprocessing | None = None  # None: the batches arrive decoded
    max_pixels: int = DEFAULT_MAX_PIXELS
    digest: bool = False

    def passes(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """The batch's rows, `step` at a time, with their pixels, errors and sha256s."""
        starts = range(0, len(batch["path"]), self.step)
        if self.preprocessing is None:
            yield from ({name: column[i : i + self.step] for name, column in batch.items()} for i in starts)
            return
        decode = functools.partial(decode_batch, preprocessing=self.preprocessing, max_pixels=self.max_pixels,
                                   digest=self.digest)  # fmt: skip
        parts = [{"path": batch["path"][i : i + self.step]} for i in starts]
        with ThreadPoolExecutor(max_workers=1) as ahead:
            pending = ahead.submit(decode, parts[0]) if parts else None
            for following in [*parts[1:], None]:
                current = pending.result()  # type: ignore[union-attr]
                pending = ahead.submit(decode, following) if following is not None else None
                yield current


@dataclass
class JobResult:
    """What one run of a job did: inputs in all, skipped as already written, written now, failed now."""

    out: str
    total: int
    skipped: int
    written: int
    failed: int
    seconds: float
    workers: int

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.written and self.seconds > 0 else float("nan")


def require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingPackageError("--ray needs Ray Data: pip install 'visiontune[ray]'") from exc
    return ray


def connect(address: str = "auto") -> Any:
    """Join the Ray cluster at `address` ("auto": this machine's, or a new local one); reuse a live connection."""
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, logging_level=logging.WARNING, log_to_driver=True)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws one bar; Ray's would interleave with it
    context.print_on_execution_start = False
    return ray


# ---- prediction -----------------------------------------------------------------------------------
def predict_on_ray(
    model: str,
    paths: Sequence[str],
    out: str,
    *,
    options: RayOptions = RayOptions(),
    topk: int = 5,
    tta: bool = False,
    unknown: bool = True,
    unknown_score: str | None = None,
    coverage: float | None = None,
    backend: str = "torch",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> JobResult:
    """Predict every path on a Ray cluster into Parquet shards under `out` (see `shards.read_predictions`).

    `model` (a bundle, run folder, .onnx file or backbone name) must be readable at the same path
    on every node, and so must `paths` (or be URLs). Paths already in `out` are skipped.

    Example:
        >>> predict_on_ray("runs/demo", ["a.png", "b.png"], "results")  # doctest: +SKIP
        >>> read_predictions("results")[0]["predictions"][0]["label"]  # doctest: +SKIP
    """
    from visiontune.predict import load

    if topk < 1:
        raise ConfigError(f"`topk` must be at least 1. Received: topk={topk}")
    if backend == "onnx" and options.num_gpus_per_worker > 0:
        raise ConfigError("the onnx backend runs on CPU workers: use --backend torch with --num-gpus-per-worker")
    predictor = load(model, device="cpu", backend=backend)  # fails here, in one line, rather than on each worker
    predictor.calibration.threshold(unknown_score or predictor.calibration.score)  # a bad score name, likewise
    source = os.path.abspath(model) if os.path.exists(model) else model
    settings = {"topk": topk, "tta": tta, "unknown": unknown, "unknown_score": unknown_score, "coverage": coverage}
    job = {"task": "predict", "model": source, "backend": backend, **settings}
    worker = {"model": source, "backend": backend, **settings}
    return _run(paths, out, job, PredictWorker, worker, predictor.preprocessing, options, max_pixels, progress)


class PredictWorker:
    """A Ray actor: the model loaded once; each batch of paths (or decoded pixels) -> rows -> one shard."""

    def __init__(
        self, *, out: str, device: str, threads: int, decoding: Decoding, model: str, backend: str, **settings: Any
    ) -> None:
        import torch

        from visiontune.predict import load

        torch.set_num_threads(threads)
        self.decoding = decoding
        self.predictor = load(model, device=device, backend=backend)
        self.settings = settings  # topk, tta, unknown, unknown_score, coverage
        self.shards = Shards(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from visiontune.predict import Prediction

        rows: list[Any] = []
        for part in self.decoding.passes(batch):
            paths, errors = _strings(part["path"]), _strings(part["error"])
            # an input that failed to decode gets the error row Predictor.predict gives it
            ranked = [Prediction(p, [], error=e) if e else None for p, e in zip(paths, errors, strict=True)]
            ok = [i for i, row in enumerate(ranked) if row is None]
            if ok:
                pixels = torch.from_numpy(np.ascontiguousarray(part["pixels"][ok]))
                answers = self.predictor.predict_pixels(pixels, paths=[paths[i] for i in ok], **self.settings)
                for i, prediction in zip(ok, answers, strict=True):
                    ranked[i] = prediction
            rows.extend(ranked)
        self.shards.write(prediction_table([row.to_dict() for row in rows]))
        paths = [row.path for row in rows]
        return {"path": np.array(paths, dtype=object), "failed": np.array([r.error is not None for r in rows])}


# ---- embedding ------------------------------------------------------------------------------------
def embed_on_ray(
    paths: Sequence[str],
    out: str,
    *,
    model: ModelConfig = ModelConfig(),
    tta: bool = False,
    precision: str = "auto",
    options: RayOptions = RayOptions(),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> tuple[JobResult, dict[str, Any]]:
    """Pooled backbone embeddings of every path into Parquet shards (path, sha256, embedding, error).

    The backbone is built as `train --method features` builds it from the same options (image
    size: the backbone's own unless given), so `cache_embeddings(out, recipe)` fills the feature
    cache that training reads. Returns the job's result and that recipe.
    """
    from visiontune.features.cache import weights_digest
    from visiontune.features.extract import View, feature_recipe
    from visiontune.models import create_classifier, get_backbone

    check_choice("precision", precision, ("auto", "fp32", "bf16", "fp16"))
    if precision == "auto":
        precision = PRECISIONS_ON_GPU if options.num_gpus_per_worker > 0 else "fp32"
    kwargs = {"pretrained": model.pretrained, "weights": model.weights, "drop_rate": model.drop_rate,
              "pool": model.pool, "image_size": model.image_size or get_backbone(model.chosen_backbone).default_size,
              "resize_mode": model.resize_mode}  # fmt: skip
    classifier = create_classifier(model.chosen_backbone, 2, **kwargs)
    recipe = feature_recipe(classifier, pool=model.pool, tta=tta, view=View(), precision=precision)
    job = {"task": "embed", "recipe": recipe}
    worker = {"backbone": model.chosen_backbone, "kwargs": kwargs, "tta": tta, "precision": precision,
              "weights_sha256": weights_digest(classifier.backbone)}  # fmt: skip
    result = _run(paths, out, job, EmbedWorker, worker, classifier.preprocessing, options, max_pixels, progress)
    return result, recipe


class EmbedWorker:
    """A Ray actor: the frozen backbone loaded once; each batch -> pooled vectors -> one shard."""

    def __init__(
        self,
        *,
        out: str,
        device: str,
        threads: int,
        decoding: Decoding,
        backbone: str,
        kwargs: dict[str, Any],
        tta: bool,
        precision: str,
        weights_sha256: str,
    ) -> None:
        import torch

        from visiontune.features.cache import weights_digest
        from visiontune.inference import Inference
        from visiontune.models import create_classifier

        torch.set_num_threads(threads)
        model = create_classifier(backbone, 2, **kwargs)
        if weights_digest(model.backbone) != weights_sha256:  # another package version on this node
            raise ConfigError(f"{backbone}: this worker's weights differ from the driver's; install the same versions")
        self.runner = Inference.create(model, model.preprocessing, device=device, precision=precision)
        self.pool, self.tta, self.decoding = kwargs["pool"], tta, decoding
        self.shards = Shards(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow as pa
        import torch

        from visiontune.models.fitted import embed

        model = self.runner.model
        columns: dict[str, list[Any]] = {"path": [], "sha256": [], "embedding": [], "error": []}
        for part in self.decoding.passes(batch):
            paths, errors, digests = _strings(part["path"]), _strings(part["error"]), _strings(part["sha256"])
            vectors: list[Any] = [None] * len(paths)
            ok = [i for i, error in enumerate(errors) if not error]
            if ok:
                pixels = torch.from_numpy(np.ascontiguousarray(part["pixels"][ok]))
                outputs = self.runner(pixels, forward=lambda x: embed(model, x, pool=self.pool, tta=self.tta))
                for i, vector in zip(ok, outputs.numpy(), strict=True):
                    vectors[i] = vector
            for name, values in (("path", paths), ("sha256", [d or None for d in digests]), ("embedding", vectors),
                                 ("error", [e or None for e in errors])):  # fmt: skip
                columns[name].extend(values)
        self.shards.write(pa.table(columns, schema=EMBEDDING_SCHEMA))
        return {
            "path": np.array(columns["path"], dtype=object),
            "failed": np.array([bool(e) for e in columns["error"]]),
        }


def cache_embeddings(out: str, recipe: dict[str, Any], root: str | None = None, *, chunk: int = 4096) -> int:
    """Add an embedding job's vectors to the feature cache of `recipe` (in `root`); returns how many were new."""
    from visiontune.features.cache import FeatureCache

    cache = FeatureCache(recipe, root)
    pending: dict[str, np.ndarray] = {}
    added = 0
    for table in Shards(out).tables(columns=["sha256", "embedding"]):
        columns = (table.column("sha256").to_pylist(), table.column("embedding").to_pylist())
        for digest, vector in zip(*columns, strict=True):
            if digest is not None and vector is not None:
                pending[digest] = np.asarray(vector, dtype=np.float32)
        if len(pending) >= chunk:
            added += _put_new(cache, pending)
    return added + _put_new(cache, pending)


def _put_new(cache: Any, pending: dict[str, np.ndarray]) -> int:
    hashes = list(pending)
    found = cache.get(hashes)[1] if hashes else np.zeros(0, dtype=bool)
    new = [h for h, known in zip(hashes, found, strict=True) if not known]
    if new:
        cache.put(new, np.stack([pending[h] for h in new]))
    pending.clear()
    return len(new)


# ---- the pipeline ---------------------------------------------------------------------------------
def decode_batch(
    batch: dict[str, np.ndarray], *, preprocessing: Preprocessing, max_pixels: int, digest: bool
) -> dict[str, np.ndarray]:
    """A Ray CPU task: paths -> (B, H, W, 3) uint8 pixels at model size, each failure's reason, sha256s."""
    from visiontune.predict.predictor import model_inputs

    paths = _strings(batch["path"])
    items = model_inputs(paths, preprocessing, max_pixels=max_pixels, digest=digest, dataset=UrlItems)
    height, width = preprocessing.image_size
    pixels = np.zeros((len(paths), height, width, 3), dtype=np.uint8)  # zeros where a file failed
    errors, digests = [], []
    for i in range(len(paths)):
        image, _, error, sha256, _ = items[i]
        if image is not None:
            pixels[i] = image.numpy()
        errors.append("" if image is not None else error or "can't be read")
        digests.append(sha256 or "")
    return {"path": np.array(paths, dtype=object), "error": np.array(errors, dtype=object),
            "sha256": np.array(digests, dtype=object), "pixels": pixels}  # fmt: skip


def _run(
    paths: Sequence[str],
    out: str,
    job: dict[str, Any],
    worker: type,
    settings: dict[str, Any],
    preprocessing: Preprocessing,
    options: RayOptions,
    max_pixels: int,
    progress: Callable[[int], None] | None,
) -> JobResult:
    """List what is left, stream it through the worker pool (GPU workers: and decode tasks), count the rows back."""
    started = time.perf_counter()
    shards = Shards(out)
    shards.claim(job)
    done = shards.written_paths()
    todo = [p for p in dict.fromkeys(str(p) for p in paths) if p not in done]
    skipped = len(paths) - len(todo)
    if progress and skipped:
        progress(skipped)
    if not todo:
        return JobResult(out, len(paths), skipped, 0, 0, time.perf_counter() - started, 0)
    ray = connect(options.address)
    workers = options.concurrency or default_concurrency(ray.cluster_resources(), options)
    batch = options.batch()
    dataset = _paths_dataset(ray, todo, batch * BLOCK_BATCHES)
    gpus = options.num_gpus_per_worker > 0
    threads = max(1, int(options.num_cpus_per_worker))
    step = options.forward_batch(threads, preprocessing.image_size)
    decoding = Decoding(step, preprocessing, max_pixels, digest=job["task"] == "embed")
    if gpus:  # CPU tasks decode beside the GPU workers; CPU workers decode their own (see Decoding)
        dataset = dataset.map_batches(
            decode_batch, batch_size=batch, num_cpus=DECODE_CPUS, batch_format="numpy",
            fn_kwargs={"preprocessing": preprocessing, "max_pixels": max_pixels, "digest": decoding.digest},
        )  # fmt: skip
        decoding = dataclasses.replace(decoding, preprocessing=None)
    results = dataset.map_batches(
        worker,
        batch_size=batch,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=options.num_cpus_per_worker,
        num_gpus=options.num_gpus_per_worker or None,
        batch_format="numpy",
        fn_constructor_kwargs={
            "out": out,
            "device": options.device,
            "threads": threads,
            "decoding": decoding,
            **settings,
        },
    )
    written = failed = 0
    for returned in results.iter_batches(batch_size=None, batch_format="numpy"):
        count = len(returned["path"])
        written, failed = written + count, failed + int(returned["failed"].sum())
        if progress:
            progress(count)
    seconds = time.perf_counter() - started
    log.info("%d written (%d failed), %d skipped, %.1f s with %d workers", written, failed, skipped, seconds, workers)
    return JobResult(out, len(paths), skipped, written, failed, seconds, workers)


def default_concurrency(resources: dict[str, float], options: RayOptions) -> int:
    """Every GPU's share for GPU workers; for CPU workers (which decode their own images) every CPU's share."""
    if options.num_gpus_per_worker > 0:
        gpus = resources.get("GPU", 0.0)
        if gpus < options.num_gpus_per_worker:
            raise ConfigError(f"--num-gpus-per-worker {options.num_gpus_per_worker} but the cluster has {gpus:g} GPUs")
        return max(1, math.floor(gpus / options.num_gpus_per_worker))
    return max(1, math.floor(resources.get("CPU", 1.0) / options.num_cpus_per_worker))


def _paths_dataset(ray: Any, paths: list[str], per_block: int) -> Any:
    """The paths as a Ray dataset of Arrow blocks (compact on the driver, even for millions)."""
    import pyarrow as pa

    blocks = [pa.table({"path": paths[i : i + per_block]}) for i in range(0, len(paths), per_block)]
    return ray.data.from_arrow(blocks)


def _strings(column: np.ndarray) -> list[str]:
    return [str(value) if value is not None else "" for value in column]
