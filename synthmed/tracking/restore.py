"""Rebuild a trained model from its MLflow run: recorded config + weights-only checkpoint, nothing pickled."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from synthmed.config import instantiate
from synthmed.models.base import GenerativeModule, load_weights
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.checkpoints import refuse_url
from synthmed.tracking.refs import run_ref


@dataclass
class Restored:
    """A trained run brought back: its MLflow record, resolved config, model and dataset record."""

    run: Run
    cfg: DictConfig
    model: GenerativeModule
    dataset: dict  # data/dataset.json: name, fingerprint, intensity, geometry
    step: int  # global step of the loaded checkpoint


def download(client: MlflowClient, run_id: str, artifact: str, cache: Path) -> Path:
    """An artifact of a run, downloaded once into `cache/<run id>/` and reused."""
    local = cache / run_id / artifact
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        client.download_artifacts(run_id, artifact, str(cache / run_id / Path(artifact).parent))
    return local


def restore_run(client: MlflowClient, ref: str, cache: Path, checkpoint: str = "final.ckpt") -> Restored:
    """Find the run by id or hash prefix, rebuild its model from the recorded config and load its weights."""
    refuse_url(ref, "run")
    refuse_url(checkpoint, "checkpoint")
    run = mt.find_run(client, ref)
    run_id = run.info.run_id
    cfg = OmegaConf.load(download(client, run_id, "config/config.yaml", cache))
    model = instantiate(cfg.model, "model")
    ckpt = load_weights(model, download(client, run_id, f"checkpoints/{checkpoint}", cache))
    try:
        dataset = json.loads(download(client, run_id, "data/dataset.json", cache).read_text())
    except Exception:  # runs recorded before data/dataset.json existed: export in [-1, 1] units
        dataset = {"name": cfg.dataset.name, "intensity": {}, "geometry": None}
    return Restored(run, cfg, model.eval(), dataset, int(ckpt.get("global_step", 0)))


def restore_for_sampling(cfg: DictConfig) -> tuple[MlflowClient, Restored]:
    """What `synthmed sample|evaluate|translate` start from: run `cfg.run` of the store `cfg.tracking_uri` /
    `cfg.paths.root`, restored from `cfg.checkpoint`, on `cfg.device`, sampling `cfg.batch_size` at a time."""
    client = MlflowClient(mt.tracking_uri(cfg.tracking_uri, cfg.paths.root))
    restored = restore_run(client, run_ref(cfg, "run"), Path(cfg.paths.cache_dir) / "runs", cfg.checkpoint)
    restored.model.to(cfg.device)
    restored.model.sample_batch_size = cfg.batch_size
    return client, restored


def provenance(restored: Restored, seed: int) -> dict:
    """The sidecar fields that tie an exported image to its run: run id, config hash, seed, model, data set."""
    tags = restored.run.data.tags
    return {"run_id": restored.run.info.run_id, "config_hash": tags.get(tk.CONFIG_HASH, ""), "seed": seed,
            "model_family": tags.get(tk.MODEL_FAMILY, restored.model.family), "model": restored.cfg.model.name,
            "dataset": restored.dataset.get("name")}
