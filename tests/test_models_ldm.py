"""LDM: resolving the first stage (checkpoint, run id, hash, multirun sibling) outside the model, the latent scale,
the process group, the two-run link in MLflow, and an LDM that samples after its VAE's folders are gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from synthmed.config import instantiate
from synthmed.metrics import names
from synthmed.models.base import state_digest
from synthmed.models.noise import GaussianDiffusion, RectifiedFlow
from synthmed.tracking import first_stage
from synthmed.tracking import tags as tk
from synthmed.tracking.confighash import config_hash
from tests.conftest import compose_train, save_run_folder
from tests.test_contract import fit

FAST = ["debug=smoke", "model.process.num_inference_steps=3"]


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vae_run")
    cfg = compose_train(root, ["model=vae", "debug=smoke"])
    pl.seed_everything(0)
    model = instantiate(cfg.model, "model")
    trainer = fit(model, instantiate(cfg.dataset.datamodule, "dataset.datamodule"), root, steps=2)
    return save_run_folder(root, cfg, trainer)


def build_ldm(root: Path, *overrides: str, multirun: bool = False, with_tags: bool = False):
    """An ldm built as `synthmed train` builds it: the first stage resolved into the config, then loaded."""
    cfg = compose_train(root, ["model=ldm", *FAST, *overrides])
    pl.seed_everything(0)
    model, tags = first_stage.build_model(cfg, multirun)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    return (datamodule, model, tags, cfg) if with_tags else (datamodule, model)


def test_process_group_composes_per_model(tmp_path):
    ldm = compose_train(tmp_path, ["model=ldm"]).model.process
    assert ldm._target_.endswith("GaussianDiffusion") and ldm.clip_sample is False  # latents are unbounded
    assert compose_train(tmp_path, ["model=ddpm"]).model.process.clip_sample is True  # images live in [-1, 1]
    rflow = compose_train(tmp_path, ["model=ldm", "model/process=rflow"]).model.process
    assert rflow._target_.endswith("RectifiedFlow") and "clip_sample" not in rflow
    v = compose_train(tmp_path, ["model=ldm", "model/process=ddpm", "model.process.prediction_type=v_prediction"])
    assert (v.model.process.sampler, v.model.process.prediction_type) == ("ddpm", "v_prediction")


@pytest.mark.parametrize("process,kind", [("ddim", GaussianDiffusion), ("rflow", RectifiedFlow)])
def test_samplers_are_selectable(tmp_path, vae_ckpt, process, kind):
    _, model = build_ldm(tmp_path, f"model.autoencoder='{vae_ckpt}'", f"model/process={process}")
    assert isinstance(model.process, kind)
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 16, 16)


def test_latent_scale_is_estimated_recorded_and_kept(tmp_path, vae_ckpt):
    datamodule, model = build_ldm(tmp_path, f"model.autoencoder='{vae_ckpt}'")
    assert model.noise_shape() == model.vae.latent_shape == (3, 4, 4)
    assert not model.vae.training and not any(p.requires_grad for p in model.vae.parameters())
    batches = [{"image": datamodule.images("train")[i:i + 4]} for i in range(0, 8, 4)]
    latents = torch.cat([model.vae.encode(b["image"]) for b in batches])
    assert model.estimate_latent_scale(batches, 2) == pytest.approx(1 / latents.double().std(unbiased=False).item())

    assert not model.latent_scale_estimated and model.latent_scale == 1.0
    trainer = fit(model, datamodule, tmp_path, steps=2)
    scale = float(model.latent_scale)
    assert model.latent_scale_estimated and scale != 1.0 and model.vae.training is False
    ckpt = tmp_path / "ldm.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert float(state["latent_scale"]) == scale and any(k.startswith("vae.") for k in state)
    model.estimate_latent_scale = lambda *a, **k: pytest.fail("a recorded scale must not be re-estimated")
    fit(model, datamodule, tmp_path, steps=1)  # a further fit (or a resume) keeps the recorded scale
    assert float(model.latent_scale) == scale


def test_checkpoint_reference_tags_and_errors(tmp_path, vae_ckpt):
    _, model, tags, cfg = build_ldm(tmp_path, f"model.autoencoder='{vae_ckpt}'", with_tags=True)
    vae_cfg = OmegaConf.load(vae_ckpt.parent.parent / "config" / "config.yaml")
    vae_state = torch.load(vae_ckpt, weights_only=True)["state_dict"]
    digest = state_digest(vae_state)
    assert tags == {tk.AUTOENCODER_CHECKPOINT: str(vae_ckpt), tk.AUTOENCODER_HASH: config_hash(vae_cfg),
                    tk.AUTOENCODER_DIGEST: digest}
    # The config now names the VAE by identity, and the model holds its trained weights.
    assert (cfg.model.autoencoder, cfg.model.autoencoder_digest) == (config_hash(vae_cfg), digest)
    assert cfg.model.first_stage._target_ == "synthmed.models.vae.VAEModule"
    assert all(torch.equal(v, vae_state[k]) for k, v in model.vae.state_dict().items())
    with pytest.raises(Exception, match="model.autoencoder is null.*not part of a multirun.*model.autoencoder="):
        build_ldm(tmp_path)  # not in a multirun: nothing to find, and the error says what to pass
    with pytest.raises(Exception, match="not a checkpoint file, an MLflow run id or a config hash"):
        build_ldm(tmp_path, "model.autoencoder=abcdef012345")
    with pytest.raises(Exception, match="in_channels"):
        build_ldm(tmp_path, f"model.autoencoder='{vae_ckpt}'", "model.net.in_channels=4")
    with pytest.raises(Exception, match="image_shape"):
        build_ldm(tmp_path, f"model.autoencoder='{vae_ckpt}'", "dataset.size=32")
    lonely = tmp_path / "lonely.ckpt"
    shutil.copy(vae_ckpt, lonely)
    with pytest.raises(Exception, match="no config to rebuild the autoencoder"):
        build_ldm(tmp_path, f"model.autoencoder='{lonely}'")
    with pytest.raises(ValueError, match="it is another VAE"):  # a recorded digest that the VAE found does not match
        build_ldm(tmp_path, f"model.autoencoder='{vae_ckpt}'", "+model.autoencoder_digest=" + "0" * 64)


def test_the_hash_depends_on_the_vae_not_on_how_it_is_referenced(tmp_path, vae_ckpt, mlflow_template):
    # The same VAE by path, by MLflow run id and by hash prefix gives one ldm config hash.
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    vae_cfg = OmegaConf.load(vae_ckpt.parent.parent / "config" / "config.yaml")
    run = client.create_run(client.create_experiment("x"), tags={tk.CONFIG_HASH: config_hash(vae_cfg)})
    client.log_artifact(run.info.run_id, str(vae_ckpt.parent.parent / "config" / "config.yaml"), "config")
    client.log_artifact(run.info.run_id, str(vae_ckpt), "checkpoints")
    client.set_terminated(run.info.run_id)
    hashes = set()
    for ref in (f"'{vae_ckpt}'", run.info.run_id, config_hash(vae_cfg)[:12]):
        *_, tags, cfg = build_ldm(tmp_path, f"model.autoencoder={ref}", with_tags=True)
        hashes.add(config_hash(cfg))
        assert tags[tk.AUTOENCODER_RUN] == run.info.run_id  # found in the store paths.root points at
    assert len(hashes) == 1
    other = tmp_path / "other" / "checkpoints" / "final.ckpt"
    other.parent.mkdir(parents=True)
    state = torch.load(vae_ckpt, weights_only=True)
    state["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, other)
    shutil.copytree(vae_ckpt.parent.parent / "config", other.parent.parent / "config")
    *_, cfg = build_ldm(tmp_path, f"model.autoencoder='{other}'", with_tags=True)
    assert config_hash(cfg) not in hashes  # same VAE config, other weights: another ldm


def test_a_non_vae_run_is_refused(tmp_path):
    cfg = compose_train(tmp_path / "gan", ["model=gan", "debug=smoke"])
    model = instantiate(cfg.model, "model")
    trainer = fit(model, instantiate(cfg.dataset.datamodule, "dataset.datamodule"), tmp_path, steps=1)
    ckpt = save_run_folder(tmp_path / "gan", cfg, trainer)
    with pytest.raises(Exception, match="not a VAE"):
        build_ldm(tmp_path, f"model.autoencoder='{ckpt}'")


def _fake_job(sweep: Path, num: int, cfg, ckpt: Path | None) -> Path:
    """A Hydra multirun job folder: `.hydra/config.yaml` (unresolved) and, when finished, its final checkpoint."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    if ckpt is not None:
        (job / "checkpoints").mkdir()
        shutil.copy(ckpt, job / "checkpoints" / "final.ckpt")
    return job


def test_null_finds_the_vae_job_of_the_same_multirun(tmp_path, vae_ckpt):
    sweep = tmp_path / "multirun"
    _fake_job(sweep, 0, compose_train(tmp_path, ["model=vae", "debug=smoke", "seed=1"]), vae_ckpt)  # other seed
    _fake_job(sweep, 1, compose_train(tmp_path, ["model=vae", "debug=smoke"]), vae_ckpt)
    job = _fake_job(sweep, 2, compose_train(tmp_path, ["model=ldm", "debug=smoke"]), None)
    config, ckpt = first_stage.sweep_sibling(job)
    assert ckpt == sweep / "1" / "checkpoints" / "final.ckpt" and config.seed == 0
    *_, tags, _ = build_ldm(tmp_path, f"paths.output_dir='{job}'", multirun=True, with_tags=True)
    assert tags[tk.AUTOENCODER_CHECKPOINT] == str(ckpt)
    with pytest.raises(ValueError, match="not part of a multirun"):  # the same folder outside a multirun
        build_ldm(tmp_path, f"paths.output_dir='{job}'")
    other = _fake_job(sweep, 3, compose_train(tmp_path, ["model=ldm", "debug=smoke", "seed=5"]), None)
    with pytest.raises(ValueError, match="no finished vae job with the same settings"):
        first_stage.sweep_sibling(other)


@pytest.mark.slow
def test_multirun_vae_then_ldm_links_the_two_runs(tmp_path, mlflow_template):
    # The study's pattern end to end: one `synthmed train -m model=vae,ldm`, the ldm finds the vae job.
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    cmd = [sys.executable, "-m", "synthmed.train", "-m", "model=vae,ldm", "debug=smoke", f"paths.root={tmp_path}",
           "metrics.metrics=[ms_ssim_diversity]", "eval.metrics=[ms_ssim_diversity]"]  # the link is tested, not metrics
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny nets: one thread is faster, much faster on a busy machine
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {r.data.tags.get(tk.MODEL): r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()]) if r.data.tags.get(tk.MODEL)}
    vae, ldm = runs["vae"], runs["ldm"]
    assert vae.info.status == ldm.info.status == "FINISHED"
    assert ldm.data.tags[tk.AUTOENCODER_RUN] == vae.info.run_id
    assert ldm.data.tags[tk.AUTOENCODER_HASH] == vae.data.tags[tk.CONFIG_HASH]
    assert ldm.data.metrics[names.LATENT_SCALE] > 0
    # The same VAE, found by run id and by hash prefix, rebuilt from the recorded config.
    found = []
    for ref in (vae.info.run_id, vae.data.tags[tk.CONFIG_HASH][:12]):
        cfg = compose_train(tmp_path, ["model=ldm", *FAST, f"model.autoencoder={ref}"])
        stage = first_stage.resolve_first_stage(cfg)
        assert stage.tags[tk.AUTOENCODER_RUN] == vae.info.run_id
        found.append(stage.state_dict)
    for key, value in found[0].items():
        assert torch.equal(value, found[1][key])

    # The LDM samples with its VAE's Hydra folders and checkpoints gone: its record rebuilds it without a lookup.
    sampled = [sample_ldm(tmp_path, ldm.info.run_id, "before")]
    vae_jobs = [p.parent.parent for p in tmp_path.rglob(".hydra/config.yaml")
                if OmegaConf.load(p).model.name == "vae"]
    assert vae_jobs
    for folder in vae_jobs:
        shutil.rmtree(folder)
    vae_artifacts = Path(client.get_run(vae.info.run_id).info.artifact_uri.removeprefix("file://"))
    shutil.rmtree(vae_artifacts / "checkpoints")
    sampled.append(sample_ldm(tmp_path, ldm.info.run_id, "after"))
    torch.testing.assert_close(sampled[0], sampled[1], rtol=0, atol=0)


def sample_ldm(root: Path, run_id: str, name: str) -> torch.Tensor:
    """`synthmed sample` of the ldm run into `root/<name>` (in-process); the written PNGs as a tensor."""
    from synthmed.sample import sample

    cfg = compose_train(root, [f"run={run_id}", f"out={root / name}", "n=2", "format=png"], config_name="sample")
    paths = sample(cfg)
    import numpy as np
    from PIL import Image

    return torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32)) for p in paths])
