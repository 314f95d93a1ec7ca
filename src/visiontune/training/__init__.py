"""Training: one pipeline (`pipeline.train`), two fitters (`finetune`, `features.fit`), one loop (`trainer`)."""

from visiontune.training.pipeline import Hooks, TrainResult, resume_config, train

__all__ = ["Hooks", "TrainResult", "resume_config", "train"]
