"""visiontune: a folder of labelled images in, a trained, evaluated and served classifier out.

Data flows one way. `data` scans a folder or CSV, reads labels, splits (leakage-safe) and audits
it, and `data.loader` is the one image loader every stage reads through. `models` builds a
backbone with a head (`Classifier`). `training.pipeline.train` prepares a run (its `runs.RunFolder`,
the resolved config, the monitor), fits it with one of two fitters (`training.finetune`: the
Trainer's loop; `features.fit`: cached frozen features and classical heads), then finishes both
the same way: logits on valid and test, a `calibration.Calibration`, the same metric set, and
the bundle (`bundle`: JSON + safetensors, never a pickle). Every forward pass outside the
training step goes through `inference.Inference` (device, precision, channels-last, batches), so
`evaluation.evaluate` scores exactly what `predict.Predictor` serves, and `serve`, `export`,
`experiments` (tune, compare) and `cli` are thin layers over those. `cleaning` finds wrong labels
(out-of-fold probabilities on cached features, confident learning, a review page) and writes
the decisions to corrections.csv, which `data` applies whenever it reads the data.

Example:
    >>> import visiontune
    >>> report = visiontune.inspect("demo")  # doctest: +SKIP
    >>> result = visiontune.train(RunConfig(DataConfig(source="demo")))  # doctest: +SKIP
    >>> visiontune.evaluate(result.run_dir, "demo").metrics["accuracy"]  # doctest: +SKIP
    >>> visiontune.load("runs/demo").predict(["shoe.png"])[0].label  # doctest: +SKIP

The functions import their stage when called, so `import visiontune` (and the CLI's --help) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visiontune.version import __version__

if TYPE_CHECKING:
    from visiontune.cleaning import CleanResult
    from visiontune.config import RunConfig
    from visiontune.data.audit import AuditReport
    from visiontune.evaluation.evaluate import EvalResult
    from visiontune.predict import Predictor
    from visiontune.training.pipeline import TrainResult

__all__ = ["__version__", "clean", "evaluate", "inspect", "load", "train"]


def inspect(source: Any, config: Any = None, **kwargs: Any) -> AuditReport:
    """The data audit of a folder or CSV (`visiontune inspect`): see `data.audit.inspect_data`."""
    from visiontune.data.audit import inspect_data

    return inspect_data(source, config, **kwargs)


def train(config: RunConfig, **kwargs: Any) -> TrainResult:
    """Train as `config` says; write the run folder and bundle (`visiontune train`). See `training.pipeline.train`."""
    from visiontune.training.pipeline import train as run_pipeline

    return run_pipeline(config, **kwargs)


def evaluate(model: Any, data: Any, config: Any = None, **kwargs: Any) -> EvalResult:
    """Score a bundle or run on labelled images and write its report (`visiontune evaluate`)."""
    from visiontune.evaluation.evaluate import evaluate as run_evaluation

    return run_evaluation(model, data, config, **kwargs)


def load(source: Any, *, device: Any = "auto", backend: str = "torch") -> Predictor:
    """A `Predictor` for a bundle folder, a run folder (its final bundle), a backbone name or an exported .onnx.

    `backend="onnx"` runs the model in onnxruntime on the CPU (see `visiontune export`).
    """
    from visiontune.predict import load as load_predictor

    return load_predictor(source, device=device, backend=backend)


def clean(source: Any, config: Any = None, **kwargs: Any) -> CleanResult:
    """Rank the images whose labels look wrong, with suggested labels (`visiontune clean`). See `cleaning.clean`."""
    from visiontune.cleaning import clean as find_issues

    return find_issues(source, config, **kwargs)
