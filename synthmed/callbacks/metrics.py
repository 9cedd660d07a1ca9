"""Generation metrics during training: small n, after every (n-th) validation, through the shared evaluation step
(synthmed/evaluation/step.py), logged by tracking/results.py."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from synthmed.evaluation.step import evaluate_generation
from synthmed.tracking.mlflow_utils import mlflow_run
from synthmed.tracking.results import log_result

log = logging.getLogger(__name__)


class GenerationMetrics(pl.Callback):
    """Score `n_samples` fresh samples after each validation (not during the sanity check).

    Args:
        suite: a MetricSuite (conf/metrics/).
        n_samples: samples per evaluation (small: this runs during training).
        seed: generator seed; fixed so that evaluations differ only by the model's weights.
        every_n_evals: evaluate after every n-th validation.
        metrics: which of the suite's metrics to score during training (None: all of them).
    """

    def __init__(self, suite, n_samples: int = 32, seed: int = 0, every_n_evals: int = 1,
                 metrics: list[str] | None = None) -> None:
        if n_samples < 1:
            raise ValueError(f"callbacks.generation_metrics.n_samples must be >= 1, got {n_samples}")
        if every_n_evals < 1:
            raise ValueError(f"callbacks.generation_metrics.every_n_evals must be >= 1, got {every_n_evals}")
        # A subset of the run's suite (models and reference features shared). Training an in-domain encoder in
        # the middle of training made a resumed run differ from an uninterrupted one in the last bits.
        self.suite = suite.with_metrics([m for m in metrics if m in suite.metrics]) if metrics else suite
        self.n_samples = n_samples
        self.seed = seed
        self.every_n_evals = every_n_evals
        self._evals = 0

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._evals += 1
        run = mlflow_run(trainer)
        if run is None or self._evals % self.every_n_evals:
            return
        evaluation = evaluate_generation(pl_module, trainer.datamodule, self.suite, self.n_samples, self.seed)
        log_result(run, evaluation, trainer.global_step)
        log.info("step %d: %s", trainer.global_step, {k: round(v, 4) for k, v in evaluation.result.values.items()})
