"""Checkpoint callbacks and notices: what Lightning prints about checkpoints, said once and correctly."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

from pytorch_lightning.callbacks import OnExceptionCheckpoint


class FullStateOnExceptionCheckpoint(OnExceptionCheckpoint):
    """`on_exception.ckpt` with the full training state, saying so (Lightning otherwise prints "`weights_only`
    was not set, defaulting to `False`" on every interrupt, which reads like an unsafe load).

    `weights_only` here is what is *saved* (with optimizer and loop states, for resume); every entry is still a
    tensor or a plain value, and synthmed *loads* it only with `torch.load(weights_only=True)`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._uncounted: int | None = None  # the loggers' step count at the end of the current batch

    def on_train_batch_end(self, trainer, *_, **__) -> None:
        self._uncounted = trainer.fit_loop.epoch_loop._batches_that_stepped

    def on_validation_start(self, *_, **__) -> None:
        # Stopped inside a validation, a resumed run finishes that step itself (it counts it): nothing to fix.
        self._uncounted = None

    def on_exception(self, trainer, *_, **__) -> None:
        count_logged_step(trainer, self._uncounted)
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)


def count_logged_step(trainer, at_batch_end: int | None) -> None:
    """A batch that completed but whose metrics could not be logged (the tracking server went down) is not yet
    counted in the loggers' step (`_batches_that_stepped`, which Lightning advances only after logging and
    validation): count it, as the loop would have, so that a resumed run logs its next step under the next index
    instead of repeating this one."""
    loop = trainer.fit_loop.epoch_loop
    progress = loop.batch_progress.current
    completed = progress.ready == progress.completed  # the batch ran to its end, optimizer step included
    if at_batch_end is not None and completed and loop._batches_that_stepped == at_batch_end \
            and not loop._should_accumulate():
        loop._batches_that_stepped += 1


@contextmanager
def quiet_fresh_start_notices():
    """Around `trainer.fit` of a run that starts fresh: silence Lightning's two contradictory notices.

    With an `OnExceptionCheckpoint` among the callbacks, Lightning turns `fit(ckpt_path=None)` into `"last"`, warns
    that the previous fit's model will be used, then warns that no last checkpoint exists. train.py refuses to start
    where checkpoints exist (refuse_stale_checkpoints), so a fresh run always starts from scratch: neither applies.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*\.fit\(ckpt_path=None\)` was called without a model")
        warnings.filterwarnings("ignore", message=r'.*\.fit\(ckpt_path="last"\) is set, but there is no last')
        yield


def save_final(trainer, folder: Path) -> Path:
    """`<folder>/final.ckpt`, written as soon as `fit` returns, so that a run stopped during its final evaluation
    resumes from the trained state (`resume=` picks the newest checkpoint). Every rank calls this (collective).

    Full state (optimizer and loop states, so a run can continue from it); it still loads with
    `torch.load(weights_only=True)`: every entry is a tensor or a plain value.
    """
    ckpt = Path(folder) / "final.ckpt"
    trainer.save_checkpoint(ckpt, weights_only=False)
    return ckpt
