"""Generation metrics during training (small n, every evaluation) and the shared evaluate-and-log step.

Only the model's `sample()` is called, so every family gets the same metrics under the same keys.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from synthmed.tracking.mlflow_utils import RunRef, mlflow_run

log = logging.getLogger(__name__)


def evaluate_generation(model, datamodule, suite, n_samples: int, seed: int, split: str = "val",
                        n_real: int | None = None):
    """Sample `n_samples` images with `seed` and score them against the first `n_real` images of `split`.

    Returns the suite's result (`values` keyed by names.py, `tags` with provenance and skip reasons).
    """
    fake = model.sample(n_samples, generator=torch.Generator().manual_seed(seed))
    real = datamodule.images(split, n_real)
    needs_train = "memorization" in getattr(suite, "metrics", ())
    train = datamodule.images("train") if needs_train else None
    ref_key = f"{datamodule.fingerprint}-{split}-{len(real)}"
    return suite(fake.cpu(), real, train=train, ref_key=ref_key)


def log_result(run: RunRef, result, step: int) -> None:
    """Metrics at `step`, provenance as `synthmed.<name>` tags (a FID without its provenance is not comparable)."""
    for key, value in result.values.items():
        run.client.log_metric(run.run_id, key, float(value), step=step)
    for key, value in result.tags.items():
        run.client.set_tag(run.run_id, f"synthmed.{key}", str(value))


class GenerationMetrics(pl.Callback):
    """Score `n_samples` fresh samples after each validation (not during the sanity check).

    Args:
        suite: a MetricSuite (conf/metrics/).
        n_samples: samples per evaluation (small: this runs during training).
        seed: generator seed; fixed so that evaluations differ only by the model's weights.
        every_n_evals: evaluate after every n-th validation.
    """

    def __init__(self, suite, n_samples: int = 32, seed: int = 0, every_n_evals: int = 1) -> None:
        if n_samples < 1:
            raise ValueError(f"callbacks.generation_metrics.n_samples must be >= 1, got {n_samples}")
        if every_n_evals < 1:
            raise ValueError(f"callbacks.generation_metrics.every_n_evals must be >= 1, got {every_n_evals}")
        self.suite = suite
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
        result = evaluate_generation(pl_module, trainer.datamodule, self.suite, self.n_samples, self.seed)
        log_result(run, result, trainer.global_step)
        log.info("step %d: %s", trainer.global_step, {k: round(v, 4) for k, v in result.values.items()})
