"""`TensorBoardLogger` (`--log tensorboard`): the run as TensorBoard shows it, in the run folder's tensorboard/.

Per epoch, every number of the metrics row under its metrics.csv name (`train_loss`,
`valid_accuracy`, ..., `images_per_s`, `data_wait_pct`) and each parameter group's learning rate
(`lr/<group>`); at the end, the final metrics (`final/valid_accuracy`, ...; a features run's
heads as `heads/<head>/<score>`), the validation confusion matrix and sample predictions as
images, and the resolved config as hparams with the final metrics, for the HParams dashboard.
`tensorboard --logdir runs` compares every run. A resumed run drops the events after its last
checkpoint, so the curves have no doubled epochs. An ensemble's member 2, 3, ... logs its epochs in
its own folder (members/<n>/tensorboard/, a run of its own in TensorBoard); member 1's epochs and
the ensemble's final metrics are the run's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visiontune.runs.folder import TENSORBOARD
from visiontune.training.tracking import RunEnd, Tracker, flat_params, read_png

if TYPE_CHECKING:
    from visiontune.training.fitting import Prepared
    from visiontune.training.trainer import Trainer


class TensorBoardLogger(Tracker):
    """Scalars per epoch, images and hparams at the end; one event file per session of the run."""

    def __init__(self) -> None:
        self.writer: Any = None
        self.logdir = ""  # where epochs go: the run's, or the training member's
        self.run_logdir = ""  # where the final metrics go

    def start(self, p: Prepared) -> None:
        self.logdir = self.run_logdir = str(p.run.file(TENSORBOARD))

    def member(self, member: Prepared, number: int, of: int) -> None:
        self._close()
        self.logdir = str(member.run.file(TENSORBOARD))  # a writer opens there when (if) the member trains

    def before_fit(self, trainer: Trainer) -> None:
        if self.logdir and self.writer is None:
            self.writer = _writer(self.logdir, purge_step=trainer.epoch + 1 if trainer.epoch else None)

    def after_epoch(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(metrics["epoch"])
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "epoch":
                self.writer.add_scalar(key, value, step)
        for index, group in enumerate(trainer.optimizer.param_groups):
            self.writer.add_scalar(f"lr/{group.get('name', index)}", group["lr"], step)
        self.writer.flush()

    def finish(self, p: Prepared, end: RunEnd) -> None:
        from torch.utils.tensorboard.summary import hparams

        if self.logdir != self.run_logdir:
            self._close()
        writer = self.writer or _writer(self.run_logdir)
        final = {f"final/{k}": v for k, v in end.metrics.items()}
        for key, value in {**final, **end.head_metrics()}.items():
            writer.add_scalar(key, value, end.step)
        for name, path in end.figures.items():
            writer.add_image(name, read_png(path), end.step, dataformats="HWC")
        for summary in hparams(flat_params(p.config), final):  # the experiment, its start and its end
            writer.file_writer.add_summary(summary, end.step)
        writer.close()
        self.writer = None

    def fail(self, p: Prepared | None, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _writer(logdir: str, *, purge_step: int | None = None) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(logdir, purge_step=purge_step)
