"""A training progress bar in optimizer steps of `trainer.max_steps`, with the time left.

Lightning's bars count batches per epoch against `max_epochs` ("Epoch 3/-2" when only `max_steps` is set), which
says nothing about when a step-budgeted run ends. This one counts `trainer.global_step` toward `max_steps` across
epochs and resumes, so tqdm's rate and remaining-time estimate are about the whole run.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import _update_n


class StepProgressBar(TQDMProgressBar):
    """`steps 120/2000 [00:30<07:40, 4.1it/s, train/loss=0.21]`: one bar for the whole run."""

    def on_train_start(self, trainer, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        self.train_progress_bar.initial = trainer.global_step  # a resumed run: the rate counts this process's steps
        _update_n(self.train_progress_bar, trainer.global_step)
        self.train_progress_bar.set_description("steps")

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        pass  # one bar across epochs: nothing to reset

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._should_update(trainer.global_step, self.train_progress_bar.total):
            _update_n(self.train_progress_bar, trainer.global_step)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


def progress_bars(enabled: bool) -> list[StepProgressBar]:
    """The bar when `trainer.enable_progress_bar` is true (Lightning refuses a bar callback otherwise)."""
    return [StepProgressBar()] if enabled else []
