"""Sample grids logged to MLflow at every evaluation: `samples/step_XXXXXXX.png` and the `samples` image chart."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from synthmed.evaluation.step import source_request
from synthmed.tracking.mlflow_utils import log_file, mlflow_run
from synthmed.tracking.ui import log_grid
from synthmed.viz import image_grid, save_png


class SampleGrid(pl.Callback):
    """Draw `n` samples with a fixed seed after each validation and log their grid.

    The seed is the same at every step, so the grids show one set of samples evolving through training. A model
    conditioned on the label alone (`model.cond=label`) is asked for each class in turn, in equal blocks of rows
    (healthy on top, lesions below on the phantoms); a translator translates the first val sources; other models
    draw unconditional samples.

    Args:
        n: images in the grid.
        seed: generator seed for the grid's samples.
    """

    def __init__(self, n: int = 16, seed: int = 0) -> None:
        if n < 1:
            raise ValueError(f"callbacks.sample_grid.n must be >= 1, got {n}")
        self.n = n
        self.seed = seed

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.log_grid(trainer, pl_module)

    def log_grid(self, trainer: pl.Trainer, pl_module) -> str | None:
        """Sample, draw and log one grid; returns its artifact path (None without an MLflow logger)."""
        run = mlflow_run(trainer)
        if run is None:
            return None
        cond = source_request(pl_module, trainer.datamodule, self.n) or grid_request(pl_module.conditioning, self.n)
        images = pl_module.sample(self.n, generator=torch.Generator().manual_seed(self.seed), cond=cond)
        grid = image_grid(images)
        with tempfile.TemporaryDirectory() as tmp:
            png = save_png(grid, Path(tmp) / f"step_{trainer.global_step:07d}.png")
            log_file(run, png, "samples")
        log_grid(run.client, run.run_id, grid, trainer.global_step)  # the UI's image chart, with a step slider
        return f"samples/{png.name}"


def grid_request(conditioning, n: int) -> dict[str, torch.Tensor] | None:
    """Class blocks `{"label": [n]}` (0, 0, ..., 1, 1, ...) for a label-only conditional model, else None."""
    if conditioning is None or conditioning.mode != "label":
        return None
    return {"label": torch.arange(n) * conditioning.num_classes // n}
