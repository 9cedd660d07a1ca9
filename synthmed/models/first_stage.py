"""Find and rebuild the trained autoencoder that a latent model (ldm.py) works in.

A reference is one of
- a checkpoint path: the config that built it is read from its run folder, `<run>/config/config.yaml` (the MLflow
  artifact layout) or `<run>/.hydra/config.yaml` (the Hydra job folder), for `<run>/checkpoints/<name>.ckpt`;
- an MLflow run id or config-hash prefix: `config/config.yaml` and `checkpoints/final.ckpt` are downloaded;
- `None`: the `vae` job of the same Hydra multirun whose config equals this job's apart from `model`
  (`synthmed train -m model=vae,ldm` runs the jobs in order, so the VAE has finished when the LDM starts).

The autoencoder is rebuilt from the recorded `model` config with `synthmed.config.instantiate` and loaded with
`load_weights` (weights only). The returned tags link the two runs in MLflow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from synthmed.config import instantiate, register_resolvers
from synthmed.models.base import load_weights
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking.confighash import config_hash, semantic_config

TAG_RUN = "synthmed.autoencoder_run"
TAG_HASH = "synthmed.autoencoder_hash"
TAG_CHECKPOINT = "synthmed.autoencoder_checkpoint"
KEY = "model.autoencoder"  # the config key users set; named in every error
VAE_TARGET = "synthmed.models.vae.VAEModule"


def load_autoencoder(ref: str | None, paths_root: str | Path = ".", job_dir: str | Path | None = None):
    """Rebuild and load the autoencoder `ref` points to (see the module docstring).

    Returns:
        `(module, tags)`: the loaded model (a VAEModule) and `synthmed.autoencoder_*` tags for the LDM run.
    """
    register_resolvers()
    if ref is None:
        config, ckpt = sweep_sibling(job_dir)
        return _build(config, ckpt, _tags(config, ckpt, _run_id(config_hash(config), paths_root)))
    if Path(str(ref)).is_file():
        ckpt = Path(ref).resolve()
        config = OmegaConf.load(_config_beside(ckpt))
        return _build(config, ckpt, _tags(config, ckpt, None))
    client = MlflowClient(mt.tracking_uri(None, paths_root))
    try:
        run = mt.find_run(client, str(ref))
    except (LookupError, ValueError) as err:
        raise ValueError(f"{KEY}='{ref}' is not a checkpoint file, an MLflow run id or a config hash: {err}") from err
    with tempfile.TemporaryDirectory() as tmp:
        config = OmegaConf.load(client.download_artifacts(run.info.run_id, "config/config.yaml", tmp))
        ckpt = Path(client.download_artifacts(run.info.run_id, "checkpoints/final.ckpt", tmp))
        module, tags = _build(config, ckpt, _tags(config, None, run.info.run_id))
    return module, tags


def _build(config: DictConfig, ckpt: Path, tags: dict[str, str]):
    from synthmed.models.vae import VAEModule  # late: vae.py is a sibling module

    module = instantiate(config.model, KEY)
    if not isinstance(module, VAEModule):
        raise ValueError(f"{KEY}: {ckpt} was trained with model '{config.model.get('name')}' "
                         f"({config.model.get('_target_')}), not a VAE")
    load_weights(module, ckpt)
    return module, tags


def _tags(config: DictConfig, ckpt: Path | None, run_id: str | None) -> dict[str, str]:
    tags = {TAG_HASH: config_hash(config)}
    if ckpt is not None:
        tags[TAG_CHECKPOINT] = str(ckpt)
    if run_id is not None:
        tags[TAG_RUN] = run_id
    return tags


def _config_beside(ckpt: Path) -> Path:
    """The config recorded in the checkpoint's run folder (`<run>/checkpoints/x.ckpt`)."""
    candidates = [ckpt.parent.parent / "config" / "config.yaml", ckpt.parent.parent / ".hydra" / "config.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{KEY}={ckpt}: no config to rebuild the autoencoder from; expected one of "
                            f"{[str(p) for p in candidates]} (or pass the MLflow run id / config hash instead)")


def _run_id(full_hash: str, paths_root: str | Path) -> str | None:
    """The MLflow run of a config hash, when the store exists and has it (only used for the link tag)."""
    uri = mt.tracking_uri(None, paths_root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # do not create an empty store just to look
    try:
        return mt.find_run(MlflowClient(uri), full_hash).info.run_id
    except (LookupError, ValueError):
        return None


def _without_model(config: DictConfig) -> dict:
    return {k: v for k, v in semantic_config(config).items() if k != "model"}


def sweep_sibling(job_dir: str | Path | None) -> tuple[DictConfig, Path]:
    """Config and final checkpoint of the finished `vae` job of this job's Hydra multirun with equal settings."""
    own = Path(job_dir) / ".hydra" / "config.yaml" if job_dir else None
    if own is None or not own.is_file():
        raise ValueError(f"{KEY} is null, which means 'the vae job of this multirun', but {job_dir} is not a "
                         f"Hydra multirun job folder; set {KEY} to a VAE checkpoint path, MLflow run id or config "
                         f"hash, or run `synthmed train -m model=vae,ldm ...` (vae first)")
    wanted = _without_model(OmegaConf.load(own))
    for sibling in sorted(Path(job_dir).resolve().parent.glob("*/.hydra/config.yaml")):
        config = OmegaConf.load(sibling)
        ckpt = sibling.parent.parent / "checkpoints" / "final.ckpt"
        is_vae = config.model.get("_target_") == VAE_TARGET
        if is_vae and ckpt.is_file() and _without_model(config) == wanted:
            return config, ckpt
    raise ValueError(f"{KEY} is null but no finished vae job with the same settings is in {Path(job_dir).parent}; "
                     "list vae before ldm in the sweep (jobs run in order) or set it to a checkpoint/run/hash")
