"""Logging an evaluation (synthmed/evaluation/step.py) to its MLflow run: metrics, provenance tags, audit pairs."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, RunTag

from synthmed.evaluation.step import Evaluation, memorization_pairs
from synthmed.tracking import tags as tk
from synthmed.tracking.mlflow_utils import RunRef
from synthmed.viz import image_grid, save_png


def log_result(run: RunRef, evaluation: Evaluation, step: int) -> None:
    """Metrics at `step`, provenance as `synthmed.<name>` tags (a FID without its provenance is not comparable),
    and the memorization audit's closest pairs as `metrics/memorization_step_XXXXXXX.png`."""
    result = evaluation.result
    now = int(time.time() * 1000)
    run.client.log_batch(run.run_id, metrics=[Metric(key, float(value), now, step) for key, value in result.values.items()],
                         tags=[RunTag(tk.provenance(key), str(value)) for key, value in result.tags.items()])
    pairs = memorization_pairs(evaluation)
    if pairs is not None:
        with tempfile.TemporaryDirectory() as tmp:
            png = save_png(image_grid(pairs, nrow=2), Path(tmp) / f"memorization_step_{step:07d}.png")
            run.client.log_artifact(run.run_id, str(png), "metrics")
