"""VAE: the first-stage interface, reconstruction metrics at validation, the optional adversarial and perceptual
losses (off by default; when on, a discriminator trains beside it and no pretrained net enters the checkpoint)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from synthmed.config import instantiate
from synthmed.metrics import names
from synthmed.models.vae import kl_divergence
from tests.conftest import compose_train
from tests.test_contract import fit


@pytest.fixture
def vae(tmp_path):
    def make(*overrides, dataset="phantom2d"):
        cfg = compose_train(tmp_path, ["model=vae", f"dataset={dataset}", "debug=smoke", *overrides])
        pl.seed_everything(0)
        return instantiate(cfg.dataset.datamodule, "dataset.datamodule"), instantiate(cfg.model, "model")
    return make


@pytest.mark.parametrize("dataset,latent", [("phantom2d", (3, 4, 4)), ("phantom3d", (3, 4, 4, 4))])
def test_latent_interface(vae, dataset, latent):
    datamodule, model = vae(dataset=dataset)
    assert model.noise_shape() == latent and model.discriminator is None
    x = datamodule.images("val", 2)
    mean = model.encode(x)
    assert mean.shape == (2, *latent)
    torch.testing.assert_close(model.encode(x), mean)  # the posterior mean is deterministic
    assert not torch.allclose(model.encode(x, sample=True), mean)
    assert model.decode(mean).shape == x.shape


def test_validation_logs_reconstruction_metrics(vae, tmp_path):
    datamodule, model = vae()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=1, default_root_dir=tmp_path)
    metrics = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    assert {names.VAL_LOSS, names.SSIM, names.PSNR, names.MAE} <= set(metrics)
    x = datamodule.images("val", datamodule.val_batch_size)
    mae = (model.decode(model.encode(x)).clamp(-1, 1) - x).abs().mean()
    assert metrics[names.MAE] == pytest.approx(mae.item(), rel=1e-4)


def test_kl_divergence_matches_closed_form():
    mu, sigma = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert kl_divergence(mu, sigma).item() == 0.0
    mu2 = torch.full((1, 1, 2, 2), 2.0)
    assert kl_divergence(mu2, torch.ones_like(mu2)).item() == pytest.approx(4 * 0.5 * 4.0)


def test_adversarial_and_perceptual_losses(vae, tmp_path):
    datamodule, model = vae("model.adversarial_weight=0.1", "model.perceptual_weight=0.5",
                            "model.perceptual={_target_:torch.nn.L1Loss}")
    assert model.discriminator is not None
    trainer = fit(model, datamodule, tmp_path, steps=2)
    assert trainer.global_step == 2  # autoencoder steps only; the discriminator's are not counted
    keys = {names.TRAIN_LOSS, names.TRAIN_LOSS_RECON, names.TRAIN_LOSS_KL, names.TRAIN_LOSS_G, names.TRAIN_LOSS_D}
    assert keys <= set(trainer.callback_metrics)
    state = model.state_dict()
    assert any(k.startswith("discriminator.") for k in state)
    # A pretrained loss network is held outside the module tree, so it never enters a checkpoint (L1Loss has no
    # weights, so the state dict alone could not show it: check the module tree itself).
    assert model._perceptual and all(m is not model._perceptual[0] for m in model.modules())
    assert not any("perceptual" in k for k in state)


def test_arguments_are_validated(vae):
    with pytest.raises(Exception, match="recon_loss"):
        vae("model.recon_loss=huber")
    with pytest.raises(Exception, match="perceptual"):
        vae("model.perceptual_weight=1.0")  # a weight without a loss
    with pytest.raises(Exception, match="divisible"):
        vae("dataset.size=18")
