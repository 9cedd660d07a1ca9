"""The GenerativeModule contract, for every conf/model/*.yaml, in 2D and 3D at tiny sizes.

fit a few steps -> sample shape and range -> determinism under a fixed generator, independent of the batch size
-> checkpoint round trip with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from synthmed.config import CONF_DIR, instantiate
from synthmed.models.base import GenerativeModule, load_weights
from tests.conftest import compose_train, save_run_folder

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
# Per-model overrides that only make the contract test faster (fewer sampling steps); never needed for correctness.
FAST = {"ddpm": ["model.process.num_inference_steps=3"],
        "ldm": ["model.process.num_inference_steps=3"],
        "cond_ddpm": ["model.process.num_inference_steps=3"]}


def build(tmp_path: Path, model: str, dataset: str, extra: list[str] = ()):
    cfg = compose_train(tmp_path, [f"model={model}", f"dataset={dataset}", "debug=smoke", *FAST.get(model, []),
                                   *extra])
    pl.seed_everything(0)
    return cfg, instantiate(cfg.dataset.datamodule, "dataset.datamodule"), instantiate(cfg.model, "model")


def prerequisites(tmp_path: Path, model: str, dataset: str) -> list[str]:
    """Overrides pointing a model at what an earlier stage trained: the ldm gets a vae trained for 2 steps, saved
    as a run folder (`checkpoints/final.ckpt` + `config/config.yaml`) like the ones synthmed train writes."""
    if model != "ldm":
        return []
    cfg, datamodule, vae = build(tmp_path / "vae", "vae", dataset)
    ckpt = save_run_folder(tmp_path / "vae", cfg, fit(vae, datamodule, tmp_path / "vae", steps=2))
    return [f"model.autoencoder='{ckpt}'"]


def source_cond(model, datamodule, n: int = 3) -> dict | None:
    """Translators (`requires_source`) map source images: the first n of the val split; other families get None."""
    if not getattr(model, "requires_source", False):
        return None
    return {"source": torch.stack([datamodule.split("val")[i]["image"] for i in range(n)])}


def fit(model, datamodule, tmp_path: Path, steps: int = 3) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    return trainer


@pytest.mark.parametrize("dataset", ["phantom2d", "phantom3d"])
@pytest.mark.parametrize("model_name", MODELS)
def test_model_contract(tmp_path, model_name, dataset):
    stages = prerequisites(tmp_path, model_name, dataset)
    cfg, datamodule, model = build(tmp_path, model_name, dataset, stages)
    assert isinstance(model, GenerativeModule)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = fit(model, datamodule, tmp_path)
    assert trainer.global_step == 3
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training changed no weight"

    shape = tuple(cfg.model.image_shape)
    cond = source_cond(model, datamodule)
    x = model.sample(3, generator=torch.Generator().manual_seed(7), cond=cond)
    assert x.shape == (3, *shape) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()

    # Same generator state -> same samples; sample i does not depend on how many are drawn per pass.
    again = model.sample(3, generator=torch.Generator().manual_seed(7), cond=cond)
    torch.testing.assert_close(x, again, rtol=0, atol=0)
    model.sample_batch_size = 1
    one_by_one = model.sample(3, generator=torch.Generator().manual_seed(7), cond=cond)
    torch.testing.assert_close(x, one_by_one, rtol=1e-4, atol=1e-4)
    if getattr(model, "uses_noise", True):
        other = model.sample(3, generator=torch.Generator().manual_seed(8), cond=cond)
    else:  # a deterministic translator (pix2pix): other sources, not another seed, give other images
        other = model.sample(3, generator=torch.Generator().manual_seed(7), cond={"source": cond["source"].flip(0)})
    assert not torch.allclose(x, other)

    # Checkpoint: plain values and tensors only, restored into a freshly built module.
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["name"] == model_name
    _, _, fresh = build(tmp_path, model_name, dataset, stages)
    load_weights(fresh, ckpt)
    fresh.sample_batch_size = 3
    torch.testing.assert_close(fresh.sample(3, generator=torch.Generator().manual_seed(7), cond=cond), x,
                               rtol=1e-4, atol=1e-4)


def test_sample_offset_matches_a_shard(tmp_path):
    # A DDP rank that draws samples [2, 4) of a request gets exactly rows 2..3 of the single-device result.
    _, _, model = build(tmp_path, "ddpm", "phantom2d")
    full = model.sample(4, generator=torch.Generator().manual_seed(3))
    shard = model.sample(2, generator=torch.Generator().manual_seed(3), offset=2)
    torch.testing.assert_close(shard, full[2:], rtol=1e-4, atol=1e-4)


def test_load_weights_refuses_missing_and_foreign_files(tmp_path):
    _, _, model = build(tmp_path, "ddpm", "phantom2d")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_weights(model, tmp_path / "nope.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="no 'state_dict'"):
        load_weights(model, tmp_path / "foreign.ckpt")


def test_compiled_networks_keep_their_checkpoint_keys(tmp_path):
    _, _, model = build(tmp_path, "ddpm", "phantom2d")
    keys = list(model.state_dict())
    assert model.compile_networks() == ["net"]
    assert list(model.state_dict()) == keys  # checkpoints of compiled and plain runs are interchangeable
