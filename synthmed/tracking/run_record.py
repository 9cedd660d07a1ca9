"""What a training run writes to its MLflow run besides the metrics Lightning logs: the start record (params,
resolved config, data record, UI descriptions), the final record (metrics, final.json, checkpoint) and the summary
printed for the user. `synthmed train` calls these in order; see train.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from synthmed.evaluation.step import record
from synthmed.metrics.lesions import summary_line
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import ui
from synthmed.tracking.confighash import short_hash
from synthmed.tracking.results import log_result
from synthmed.tracking.sweep import job_overrides


def dataset_record(cfg: DictConfig, datamodule) -> dict:
    """What exports need to invert the intensity mapping and place samples in the data's geometry.

    Numbers only (bounds, affine): never a header of a real file.
    """
    train_set = datamodule.split("train")
    return {"name": cfg.dataset.name, "fingerprint": datamodule.fingerprint, "intensity": datamodule.intensity,
            "target_intensity": getattr(train_set, "target_intensity", None),
            "geometry": getattr(train_set, "geometry", None), "spatial_dims": cfg.dataset.spatial_dims,
            "n_train": len(train_set),  # training images: what model and dataset cards report
            # files the pre-flight check skipped (on_bad=skip), with their cause: the run says what it trained without
            "skipped_files": [str(b) for b in getattr(train_set, "quarantine", None) or []]}


def record_start(run: mt.RunRef, logger, cfg: DictConfig, datamodule, full_hash: str, family: str) -> None:
    """Params (the flattened resolved config and this job's overrides), config, environment, data record, and
    what the MLflow UI shows: Dataset column, Source, run and experiment descriptions."""
    overrides = {f"override.{k}": v for k, v in job_overrides().items()}
    logger.log_hyperparams({**mt.flatten(mt.resolved_container(cfg)), **overrides})
    mt.log_run_record(run.client, run.run_id, cfg)
    mt.log_json(run.client, run.run_id, dataset_record(cfg, datamodule), "data/dataset.json")
    if rank_zero_only.rank == 0:  # other DDP ranks hold a dummy MLflow client
        ui.describe_run(run.client, run.run_id, logger.experiment_id, cfg, datamodule.fingerprint, full_hash, family)


def system_metrics(cfg: DictConfig, run: mt.RunRef):
    """MLflow's CPU/memory (and GPU) sampler when `logger.system_metrics` is true (rank zero only), else None."""
    if not cfg.logger.get("system_metrics") or rank_zero_only.rank != 0:
        return None
    return ui.start_system_metrics(run.run_id, run.client.tracking_uri, float(cfg.logger.system_metrics_interval))


def record_final(run: mt.RunRef, trainer: pl.Trainer, evaluation, cfg: DictConfig, ckpt: Path) -> None:
    """Log the final metrics, metrics/final.json and the final checkpoint (rank zero only)."""
    log_result(run, evaluation, trainer.global_step)
    meta = {"seed": cfg.eval.seed, "split": cfg.eval.split}
    mt.log_json(run.client, run.run_id, record(evaluation, trainer.global_step, **meta), "metrics/final.json")
    mt.log_file(run, ckpt, "checkpoints")


def print_summary(run: mt.RunRef, full_hash: str, values: dict[str, float]) -> None:
    """What the user needs next: the run id, the hash to reproduce it, the numbers and how to look at them."""
    lines = [f"run id:       {run.run_id}", f"config hash:  {short_hash(full_hash)}",
             f"metrics:      {json.dumps({k: round(v, 5) for k, v in values.items()})}",
             f"tracking:     {run.client.tracking_uri}", f"open the UI:  {ui_hint(run.client.tracking_uri)}"]
    lesions = summary_line(values)  # a translator's lesion rates, each with its n and interval
    if lesions:
        lines.insert(3, f"lesions:      {lesions}")
    print("\n".join(["", "synthmed run finished", *lines]), flush=True)


def ui_hint(uri: str) -> str:
    """A server is its own UI; a local store needs `mlflow ui` over it."""
    if uri.startswith(("http://", "https://")):
        return f"{uri} (a colleague: the SSH tunnel `synthmed server` printed)"
    return f"mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri {uri}"
