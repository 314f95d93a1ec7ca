"""The run-config options of `train` and `tune`, stated once: flag, config section and key, type, help.

Each becomes a Typer option that defaults to None, so a value from --config is only overridden
by an option the user actually typed (`config.merge_overrides`); what neither gives comes from
the config dataclasses' defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer


@dataclass(frozen=True)
class RunOption:
    """One command-line option that sets one config field (`section`.`key`)."""

    name: str  # the parameter name, and the flag with _ as -
    section: str
    kind: type
    help: str
    key: str = ""  # the config field when it differs from `name`
    flags: tuple[str, ...] = ()  # when not just --name

    @property
    def field(self) -> str:
        return self.key or self.name

    def parameter(self) -> inspect.Parameter:
        flags = self.flags or (f"--{self.name.replace('_', '-')}",)
        annotation = Annotated[self.kind | None, typer.Option(*flags, help=self.help)]
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


opt = RunOption
RUN_OPTIONS = (
    opt("backbone", "model", str, "Backbone: efficientnet_lite0/1/2, small_cnn, mlp, any timm name (default:"
        " efficientnet_lite0; a --budget long enough for 12+ epochs may choose lite2 or lite1).",
      flags=("--backbone", "--model", "-m")),
    opt("method", "train", str,
        "finetune (pretrained, frozen then unfrozen), scratch, or features (frozen features, classic heads)."),
    opt("heads", "features", str,
        "--method features: any of logreg,rf,svm,knn,linear,mlp (default: logreg,knn,linear)."),
    opt("views", "features", int,
        "--method features: N views of each training image (N - 1 augmented), for small data."),
    opt("tta", "features", bool, "--method features: average each image's features with its mirror's.",
      flags=("--tta/--no-tta",)),
    opt("weights", "model", str, "Local weights file (.safetensors/.pth) for the backbone."),
    opt("pretrained", "model", bool, "Start from pretrained weights.", flags=("--pretrained/--random-init",)),
    opt("epochs", "finetune", int, "Epochs with all layers learning (after the frozen ones)."),
    opt("freeze_epochs", "finetune", int, "Epochs with the backbone frozen first."),
    opt("image_size", "model", int, "Input size in pixels (square); default: chosen from the images and backbone."),
    opt("resize", "model", str, "Resize mode: squish, crop or pad.", key="resize_mode"),
    opt("pool", "model", str, "Global pooling of the feature maps: avg, max or avgmax."),
    opt("batch_size", "finetune", int, "Images per batch (per process)."),
    opt("augment", "train", str, "Augmentation preset: none, light, standard, strong."),
    opt("rotation", "train", float, "Override the preset's rotation range in degrees."),
    opt("precision", "train", str, "auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, fp16."),
    opt("label_smoothing", "finetune", float, "Label smoothing for the loss."),
    opt("optimizer", "finetune", str, "adamw, sgd or rmsprop."),
    opt("patience", "finetune", int, "Stop after this many epochs without improvement."),
    opt("members", "finetune", int, "Train N models (seeds seed..seed+N-1) and bundle their averaged "
        "predictions; default 1, or what --budget plans."),
    opt("unfreeze_top", "finetune", int, "Unfreeze only the top N layer groups (Keras recipe)."),
    opt("bn_stats", "finetune", str, "Fine-tuning keeps BatchNorm statistics 'frozen' (default) or lets them 'adapt'."),
    opt("lr_ratio", "finetune", float, "Head rate / earliest layers' rate when fine-tuning (discriminative LRs)."),
    opt("weight_decay", "finetune", float, "Weight decay (not on norms and biases)."),
    opt("balance", "finetune", str,
        "Imbalanced classes: auto, none, weights (loss weights) or sampler (balanced batches)."),
    opt("monitor", "train", str,
        "Metric choosing the best epoch or head: auto, valid_accuracy, valid_balanced_accuracy, valid_macro_f1,"
        " valid_loss."),
    opt("mixup", "finetune", float, "MixUp alpha (0 = off)."),
    opt("cutmix", "finetune", float, "CutMix alpha (0 = off)."),
    opt("ema", "finetune", float, "Keep an EMA of the weights with this decay, e.g. 0.999."),
    opt("accumulate", "finetune", int, "Gradient accumulation steps."),
    opt("compile", "finetune", bool, "torch.compile the model.", flags=("--compile/--no-compile",)),
    opt("workers", "train", int, "Data-loading worker processes.", key="num_workers"),
    opt("sample", "data", float, "Train on a stratified fraction, e.g. 0.1."),
    opt("valid_pct", "data", float, "Validation share when the data has no valid split."),
    opt("label_regex", "data", str, r"Labels from file names, e.g. '^(.+)_\d+\.jpg$'."),
    opt("group_regex", "data", str, "Keep files sharing this regex group on one side of the split."),
    opt("seed", "data", int, "Seed for the split, sampling and training."),
    opt("log", "train", str, "Also log to tensorboard, mlflow or both (comma-separated); default: run folder only."
        " Under torchrun spell it --trackers (torchrun reads --log as its --log-dir).", flags=("--log", "--trackers")),
    opt("mlflow_uri", "train", str, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
    opt("mlflow_experiment", "train", str, "MLflow experiment name (default: the data folder's name)."),
    opt("corrections", "data", str, "corrections.csv to apply (default: DATA's own, if any; 'none': off)."),
    opt("budget", "train", str, "Time budget, e.g. 10m: image size and epochs (or frozen features) chosen to fit."),
    opt("decode_once", "train", bool, "Decode each image file once into ~/.cache/visiontune/decoded (default).",
        flags=("--decode-once/--no-decode-once",)),
)  # fmt: skip
SEED_SECTIONS = ("data", "train")  # --seed sets the split's seed and training's


def with_run_options(command: Callable[..., None], names: Sequence[str] | None = None) -> Callable[..., None]:
    """`command` with the run options (all, or those `names`) added to its signature as keyword-only options."""
    chosen = [o for o in RUN_OPTIONS if names is None or o.name in names]
    own = list(inspect.signature(command, eval_str=True).parameters.values())
    keep = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    command.__signature__ = inspect.Signature([*keep, *(o.parameter() for o in chosen)])  # type: ignore[attr-defined]
    return command


def sections(given: dict[str, Any], names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """The typed options as config sections ({section: {field: value or None}}), for `merge_overrides`."""
    result: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}, "finetune": {}, "features": {}}
    for option in RUN_OPTIONS:
        if names is None or option.name in names:
            result[option.section][option.field] = given.get(option.name)
    if "seed" in result["data"]:
        result["train"]["seed"] = result["data"]["seed"]
    return result
