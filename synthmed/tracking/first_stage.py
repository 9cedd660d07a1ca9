"""Resolve the trained first stage (a `vae`) that a latent model (ldm) is built on, before the model is built.

`model.autoencoder` may name the VAE by
- a checkpoint path: the config that built it is read from its run folder, `<run>/config/config.yaml` (the MLflow
  artifact layout) or `<run>/.hydra/config.yaml` (the Hydra job folder), for `<run>/checkpoints/<name>.ckpt`;
- an MLflow run id or config-hash prefix, looked up in the store the run logs to (`logger.tracking_uri`, else
  `MLFLOW_TRACKING_URI`, else `paths.root`): `config/config.yaml` and `checkpoints/final.ckpt` are downloaded;
- `null`, inside a Hydra multirun only: the `vae` job of the same multirun whose config equals this job's apart from
  `model` (`synthmed train -m model=vae,ldm` runs the jobs in order, so the VAE has finished when the LDM starts).

Resolution rewrites the config so that it names the VAE by identity, not by how it was referenced: `model.autoencoder`
becomes the VAE's full config hash, `model.autoencoder_digest` the sha256 of its weights and `model.first_stage` its
resolved model config. The LDM's config hash therefore depends on which VAE it uses, and its recorded config rebuilds
the architecture with no lookup (the LDM checkpoint holds the VAE weights), so sampling an LDM never needs the VAE's
run folder.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from synthmed.config import instantiate
from synthmed.models.base import GenerativeModule, state_digest
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.confighash import config_hash, semantic_config

KEY = "model.autoencoder"  # the config key users set; named in every error


@dataclass
class FirstStage:
    """A resolved first stage: its recorded config, its weights and the tags that link the two runs."""

    config: DictConfig  # the VAE run's full config
    state_dict: dict  # its trained weights (loaded with weights_only=True)
    tags: dict[str, str]


def _first_stage_name(cfg: DictConfig) -> str | None:
    """`first_stage_model` declared by the class `cfg.model` names (None: no first stage)."""
    cls = hydra.utils.get_class(cfg.model._target_)
    return cls.first_stage_model if issubclass(cls, GenerativeModule) else None


def needs_first_stage(cfg: DictConfig) -> bool:
    """Whether `cfg.model` names a model class built on a first stage (`GenerativeModule.first_stage_model`)."""
    return _first_stage_name(cfg) is not None


def resolve_first_stage(cfg: DictConfig, multirun: bool = False) -> FirstStage | None:
    """Find the VAE `cfg.model.autoencoder` names and write its identity into `cfg.model` (module docstring).

    Returns None for models without a first stage. Call it after the `_target_` allowlist check and before the
    config hash. `multirun`: this job is part of a Hydra multirun (only then may the reference be null).
    """
    if not needs_first_stage(cfg):
        return None
    ref = cfg.model.get("autoencoder")
    ckpt_tag: str | None = None
    run_id: str | None = None
    if ref is None:
        config, ckpt = sweep_sibling(cfg.paths.output_dir, multirun, _first_stage_name(cfg))
        ckpt_tag = str(ckpt)
    elif Path(str(ref)).is_file():
        ckpt = Path(str(ref)).resolve()
        config, ckpt_tag = OmegaConf.load(_config_beside(ckpt)), str(ckpt)
    else:
        config, ckpt, run_id = _download(cfg, str(ref))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if "state_dict" not in state:
        raise ValueError(f"{KEY}: {ckpt} is not a Lightning checkpoint (no 'state_dict')")
    first = FirstStage(config, state["state_dict"], {})
    digest, full_hash = state_digest(first.state_dict), config_hash(config)
    recorded = cfg.model.get("autoencoder_digest")
    if recorded and recorded != digest:
        raise ValueError(f"{KEY}={ref}: the VAE found has weights digest {digest[:12]}, but this config was recorded "
                         f"with {recorded[:12]} (model.autoencoder_digest): it is another VAE")
    first.tags = {tk.AUTOENCODER_HASH: full_hash, tk.AUTOENCODER_DIGEST: digest}
    first.tags |= {tk.AUTOENCODER_CHECKPOINT: ckpt_tag} if ckpt_tag else {}
    run_id = run_id or _run_id(cfg, full_hash)
    first.tags |= {tk.AUTOENCODER_RUN: run_id} if run_id else {}
    with open_dict(cfg):
        cfg.model.autoencoder, cfg.model.autoencoder_digest = full_hash, digest
        cfg.model.first_stage = OmegaConf.create(OmegaConf.to_container(config.model, resolve=True))
    return first


def build_model(cfg: DictConfig, multirun: bool = False) -> tuple[GenerativeModule, dict[str, str]]:
    """`cfg.model` built, with its first stage resolved and loaded when it has one; returns the model and the tags
    that link its run to the first stage's."""
    first = resolve_first_stage(cfg, multirun)
    model = instantiate(cfg.model, "model")
    if first is None:
        return model, {}
    model.load_first_stage(first.state_dict)
    return model, first.tags


def _download(cfg: DictConfig, ref: str) -> tuple[DictConfig, Path, str]:
    """Config and final checkpoint of the run `ref` (id or hash prefix) in the store this run logs to."""
    client = mt.tracking_client(cfg)
    try:
        run = mt.find_run(client, ref)
    except (LookupError, ValueError) as err:
        raise ValueError(f"{KEY}='{ref}' is not a checkpoint file, an MLflow run id or a config hash: {err}") from err
    cache = Path(tempfile.mkdtemp(prefix="synthmed-first-stage-"))
    config = OmegaConf.load(client.download_artifacts(run.info.run_id, "config/config.yaml", str(cache)))
    ckpt = Path(client.download_artifacts(run.info.run_id, "checkpoints/final.ckpt", str(cache)))
    return config, ckpt, run.info.run_id


def _config_beside(ckpt: Path) -> Path:
    """The config recorded in the checkpoint's run folder (`<run>/checkpoints/x.ckpt`)."""
    candidates = [ckpt.parent.parent / "config" / "config.yaml", ckpt.parent.parent / ".hydra" / "config.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{KEY}={ckpt}: no config to rebuild the autoencoder from; expected one of "
                            f"{[str(p) for p in candidates]} (or pass the MLflow run id / config hash instead)")


def _run_id(cfg: DictConfig, full_hash: str) -> str | None:
    """The MLflow run of a config hash, when the store exists and has it (only used for the link tag)."""
    uri = mt.tracking_uri(cfg.logger.get("tracking_uri"), cfg.paths.root)
    if not mt.store_exists(uri):
        return None  # do not create an empty store just to look
    try:
        return mt.find_run(mt.tracking_client(cfg), full_hash).info.run_id
    except (LookupError, ValueError):
        return None


def _without_model(config: DictConfig) -> dict:
    return {k: v for k, v in semantic_config(config).items() if k != "model"}


def sweep_sibling(job_dir: str | Path, multirun: bool = True, name: str = "vae") -> tuple[DictConfig, Path]:
    """Config and final checkpoint of the finished `name` job of this job's Hydra multirun with equal settings."""
    own = Path(job_dir) / ".hydra" / "config.yaml"
    if not multirun or not own.is_file():
        raise ValueError(f"{KEY} is null, which means 'the vae job of this multirun', but this run is not part of a "
                         f"multirun; pass {KEY}=<vae run id | config hash | checkpoint path>, or train both in one "
                         "sweep: synthmed train -m model=vae,ldm ... (vae first)")
    wanted = _without_model(OmegaConf.load(own))
    for sibling in sorted(Path(job_dir).resolve().parent.glob("*/.hydra/config.yaml")):
        config = OmegaConf.load(sibling)
        ckpt = sibling.parent.parent / "checkpoints" / "final.ckpt"
        if config.model.get("name") == name and ckpt.is_file() and _without_model(config) == wanted:
            return config, ckpt
    raise ValueError(f"{KEY} is null but no finished {name} job with the same settings is in {Path(job_dir).parent}; "
                     "list vae before ldm in the sweep (jobs run in order) or set it to a checkpoint/run/hash")
