"""Generation metrics during training (small n, every evaluation) and the shared evaluate-and-log step.

Only the model's `sample()` is called, so every family gets the same metrics under the same keys.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

from synthmed.data.datamodule import covariates
from synthmed.metrics.conditioning import balanced_requests
from synthmed.tracking.mlflow_utils import RunRef, mlflow_run
from synthmed.viz import image_grid, save_png

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """A scored set of samples: the suite's result and the images behind it (for artifacts)."""

    result: object  # SuiteResult: values (keys of names.py), tags (provenance), artifacts
    fake: Tensor  # [n, C, *spatial]
    train: Tensor | None  # [m, C, *spatial] when memorization was audited


def evaluate_generation(model, datamodule, suite, n_samples: int, seed: int, split: str = "val",
                        n_real: int | None = None) -> Evaluation:
    """Sample `n_samples` images with `seed` and score them against the first `n_real` images of `split`.

    A conditional model is asked for every class equally often (and covariates drawn like the training set's),
    so the conditioning metrics read each request once.
    """
    needs_cond = getattr(suite, "needs_cond", False)
    real = datamodule.images(split, n_real)
    train_cond = covariates(datamodule.split("train")) if needs_cond else None
    real_cond = covariates(datamodule.split(split), len(real)) if needs_cond else None
    conditioning = getattr(model, "conditioning", None)
    cond = None
    if needs_cond and train_cond and conditioning is not None and conditioning.enabled:
        request = balanced_requests(train_cond, n_samples, seed)
        cond = {k: request[k] for k in conditioning.keys}
    fake = model.sample(n_samples, generator=torch.Generator().manual_seed(seed), cond=cond).cpu()
    train = datamodule.images("train") if getattr(suite, "needs_train", False) else None
    ref_key = f"{datamodule.fingerprint}-{split}-{len(real)}"
    result = suite(fake, real, train=train, ref_key=ref_key, cond=cond, train_cond=train_cond,
                   real_cond=real_cond, fingerprint=datamodule.fingerprint)
    return Evaluation(result, fake, train)


def record(evaluation: Evaluation, step: int, **meta) -> dict:
    """The JSON record of an evaluation (metrics/final.json, metrics/eval.json): numbers, provenance, counts."""
    result = evaluation.result
    return {"step": step, "metrics": result.values, "tags": result.tags, "n_samples": len(evaluation.fake), **meta}


def memorization_pairs(evaluation: Evaluation) -> Tensor | None:
    """The audit's closest (sample, training image) pairs side by side, `[2k, C, *spatial]`, or None."""
    audit = evaluation.result.artifacts.get("memorization")
    if audit is None or evaluation.train is None or not audit.top_pairs:
        return None
    return torch.stack([img for s, t, _ in audit.top_pairs for img in (evaluation.fake[s], evaluation.train[t])])


def log_result(run: RunRef, evaluation: Evaluation, step: int) -> None:
    """Metrics at `step`, provenance as `synthmed.<name>` tags (a FID without its provenance is not comparable),
    and the memorization audit's closest pairs as `metrics/memorization_step_XXXXXXX.png`."""
    result = evaluation.result
    for key, value in result.values.items():
        run.client.log_metric(run.run_id, key, float(value), step=step)
    for key, value in result.tags.items():
        run.client.set_tag(run.run_id, f"synthmed.{key}", str(value))
    pairs = memorization_pairs(evaluation)
    if pairs is not None:
        with tempfile.TemporaryDirectory() as tmp:
            png = save_png(image_grid(pairs, nrow=2), Path(tmp) / f"memorization_step_{step:07d}.png")
            run.client.log_artifact(run.run_id, str(png), "metrics")


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
        evaluation = evaluate_generation(pl_module, trainer.datamodule, self.suite, self.n_samples, self.seed)
        log_result(run, evaluation, trainer.global_step)
        log.info("step %d: %s", trainer.global_step, {k: round(v, 4) for k, v in evaluation.result.values.items()})
