"""The GenerativeModule contract, for every conf/model/*.yaml, in 2D and 3D at tiny sizes.

fit a few steps -> sample shape and range -> determinism under a fixed generator, independent of the batch size
-> checkpoint round trip with `torch.load(weights_only=True)`.

Everything model-specific comes from the model's own declarations (`test_overrides`, `first_stage_model`,
`requires_source`, `uses_noise`): adding a family adds a module and a YAML and edits nothing here
(`test_a_new_family_is_picked_up_from_its_two_files`).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch

from synthmed.config import CONF_DIR, instantiate
from synthmed.evaluation.step import source_request
from synthmed.models.base import GenerativeModule, load_weights
from synthmed.tracking.first_stage import build_model
from tests.conftest import compose_train, save_run_folder


def model_names(conf_dir: Path) -> list[str]:
    """Every model config: the contract covers a new family as soon as its YAML exists."""
    return sorted(p.stem for p in (conf_dir / "model").glob("*.yaml"))


MODELS = model_names(CONF_DIR)


def build(tmp_path: Path, model: str, dataset: str, extra: list[str] = ()):
    """Compose `model` on `dataset` with the model's own `test_overrides`, then build it as `synthmed train` does
    (first stage resolved and loaded)."""
    overrides = [f"model={model}", f"dataset={dataset}", "debug=smoke", *extra]
    cls = hydra.utils.get_class(compose_train(tmp_path, overrides).model._target_)
    cfg = compose_train(tmp_path, [*overrides[:3], *cls.test_overrides, *extra])
    pl.seed_everything(0)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    return cfg, datamodule, build_model(cfg)[0]


def prerequisites(tmp_path: Path, model: str, dataset: str, extra: list[str] = ()) -> list[str]:
    """Overrides pointing a model at the first stage it declares (`first_stage_model`, e.g. the ldm's vae), trained
    for 2 steps and saved as a run folder (`checkpoints/final.ckpt` + `config/config.yaml`) as synthmed train does."""
    cls = hydra.utils.get_class(compose_train(tmp_path, [f"model={model}", *extra]).model._target_)
    if cls.first_stage_model is None:
        return []
    stage = cls.first_stage_model
    cfg, datamodule, first = build(tmp_path / stage, stage, dataset, extra)
    ckpt = save_run_folder(tmp_path / stage, cfg, fit(first, datamodule, tmp_path / stage, steps=2))
    return [f"model.autoencoder='{ckpt}'"]


def trainable(model: GenerativeModule) -> dict[str, torch.Tensor]:
    """Copies of the parameters the optimizers update (no EMA copies, buffers, counters or latent scales)."""
    ids = {id(p) for p in model.trainable_parameters()}
    return {name: p.detach().clone() for name, p in model.named_parameters() if id(p) in ids}


def fit(model, datamodule, tmp_path: Path, steps: int = 3) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    return trainer


@pytest.mark.parametrize("dataset", ["phantom2d", "phantom3d"])
@pytest.mark.parametrize("model_name", MODELS)
def test_model_contract(tmp_path, model_name, dataset):
    assert_contract(tmp_path, model_name, dataset)


def assert_contract(tmp_path: Path, model_name: str, dataset: str, extra: list[str] = ()) -> None:
    stages = prerequisites(tmp_path, model_name, dataset, extra)
    cfg, datamodule, model = build(tmp_path, model_name, dataset, [*stages, *extra])
    assert isinstance(model, GenerativeModule)
    before = trainable(model)
    assert before, "the model has no trainable parameter"
    trainer = fit(model, datamodule, tmp_path)
    assert trainer.global_step == 3
    changed = [k for k, v in trainable(model).items() if not torch.equal(v, before[k])]
    assert changed, "training changed no trainable weight"

    shape = tuple(cfg.model.image_shape)
    cond = source_request(model, datamodule, 3)
    x = model.sample(3, generator=torch.Generator().manual_seed(7), cond=cond)
    assert x.shape == (3, *shape) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()

    # Same generator state -> same samples; sample i does not depend on how many are drawn per pass.
    again = model.sample(3, generator=torch.Generator().manual_seed(7), cond=cond)
    torch.testing.assert_close(x, again, rtol=0, atol=0)
    model.sample_batch_size = 1
    one_by_one = model.sample(3, generator=torch.Generator().manual_seed(7), cond=cond)
    torch.testing.assert_close(x, one_by_one, rtol=1e-4, atol=1e-4)
    if model.uses_noise:
        other = model.sample(3, generator=torch.Generator().manual_seed(8), cond=cond)
    else:  # a deterministic translator (pix2pix): other sources, not another seed, give other images
        other = model.sample(3, generator=torch.Generator().manual_seed(7), cond={"source": cond["source"].flip(0)})
    assert not torch.allclose(x, other)

    # Checkpoint: plain values and tensors only, restored into a freshly built module.
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["name"] == model_name
    _, _, fresh = build(tmp_path, model_name, dataset, [*stages, *extra])
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


TOY_MODULE = '''
"""A toy family: a learned mean image plus scaled noise (what a newcomer's first model might be)."""
import torch
from torch import nn

from synthmed.models.base import GenerativeModule


class ToyModule(GenerativeModule):
    family = "toy"

    def __init__(self, name, image_shape, optimizer, noise_scale=0.1, ema_decay=None, sample_batch_size=16):
        super().__init__(name, image_shape, optimizer, ema_decay, sample_batch_size)
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.net = nn.ParameterDict({"mean": nn.Parameter(torch.zeros(*image_shape))})
        self.noise_scale = noise_scale
        self.init_ema(self.net)

    def training_step(self, batch, batch_idx):
        return (batch["image"] - self.net["mean"]).pow(2).mean()

    def generate(self, noise, cond=None, generators=None):
        return torch.tanh(self.sampling_net()["mean"] + self.noise_scale * noise)
'''

TOY_YAML = """# toy: a learned mean image plus noise
_target_: synthmed.models.toy.ToyModule
name: toy                                 # run-name part
image_shape: ${dataset.image_shape}       # [C, H, W(, D)] of one image, from the dataset
noise_scale: 0.1                          # std of the noise added to the mean (image units)
optimizer:
  _target_: torch.optim.Adam
  _partial_: true                         # called with the parameters by the module
  lr: 0.1                                 # per step; one parameter tensor learns fast
"""


def test_a_new_family_is_picked_up_from_its_two_files(tmp_path, monkeypatch):
    # README "Adding a model": a module and a YAML, nothing else. The module lands in synthmed/models/ (here via
    # the package path), the YAML in conf/model/ (here a search-path folder Hydra composes with the real conf/).
    import synthmed.models

    code = tmp_path / "code"
    code.mkdir()
    (code / "toy.py").write_text(TOY_MODULE)
    monkeypatch.setattr(synthmed.models, "__path__", [*synthmed.models.__path__, str(code)])
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "toy.yaml").write_text(TOY_YAML)
    assert "toy" in model_names(tmp_path / "conf") and "toy" not in MODELS  # found by the same glob as MODELS
    assert_contract(tmp_path / "run", "toy", "phantom2d", [f"hydra.searchpath=[file://{tmp_path / 'conf'}]"])
