"""GAN parts: residual nets in 2D/3D, DiffAugment, losses and R1, and the module's two-optimizer step accounting."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from synthmed.config import instantiate
from synthmed.models import adversarial as adv
from synthmed.nets.gan import ResNetDiscriminator, ResNetGenerator
from tests.conftest import compose_train
from tests.test_contract import fit


@pytest.mark.parametrize("size", [16, [16, 8], [8, 16, 24]])
def test_nets_shapes_2d_and_3d(size):
    dims = 2 if isinstance(size, int) or len(size) == 2 else 3
    g = ResNetGenerator(dims, out_channels=2, spatial_size=size, latent_dim=8, channels=[16, 8], norm_num_groups=4)
    x = g(torch.randn(3, 8))
    spatial = [size] * dims if isinstance(size, int) else size
    assert x.shape == (3, 2, *spatial) and g.output_shape == (2, *spatial)
    assert x.min() >= -1 and x.max() <= 1
    d = ResNetDiscriminator(dims, in_channels=2, channels=[8, 16])
    assert d(x).shape == (3,)


@pytest.mark.parametrize("kwargs,name", [
    (dict(spatial_dims=4), "spatial_dims"),
    (dict(spatial_size=10), "spatial_size"),  # not divisible by 2**(3-1)
    (dict(channels=[]), "channels"),
    (dict(norm_num_groups=3), "norm_num_groups"),
])
def test_generator_validates_arguments(kwargs, name):
    args = dict(spatial_dims=2, out_channels=1, spatial_size=16, channels=[16, 8, 8], norm_num_groups=4) | kwargs
    with pytest.raises(ValueError, match=name):
        ResNetGenerator(**args)


def test_discriminator_spectral_norm_bounds_layers():
    d = ResNetDiscriminator(2, 1, channels=[8, 16], spectral_norm=True)
    for _ in range(30):  # power iterations converge during training-mode forwards
        d(torch.randn(2, 1, 8, 8))
    d.eval()
    weight = d.blocks[0].conv1.weight.flatten(1)
    assert torch.linalg.matrix_norm(weight.detach(), ord=2).item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("shape", [(4, 1, 16, 16), (2, 1, 8, 8, 8)])
def test_diffaugment_is_differentiable_and_per_image(shape):
    torch.manual_seed(0)
    x = torch.rand(shape, requires_grad=True)
    out = adv.DiffAugment()(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    same = torch.rand(shape[1:]).expand(shape)  # identical images get different augmentations
    aug = adv.DiffAugment()(same)
    assert not torch.allclose(aug[0], aug[1])


def test_diffaugment_parts():
    x = torch.zeros(2, 1, 8, 8)
    assert torch.equal(adv.DiffAugment(0, 0, 0, 0)(x), x)  # all strengths 0: identity
    torch.manual_seed(1)
    erased = adv.DiffAugment(translation=0, cutout=0.5, brightness=0, contrast=0)(torch.zeros(64, 1, 8, 8)) == -1
    rows, cols = erased.any(3).sum((1, 2)), erased.any(2).sum((1, 2))
    assert torch.equal(erased.sum((1, 2, 3)), rows * cols)  # one axis-aligned box per image...
    assert rows.max() == cols.max() == 4 and rows.min() >= 2  # ...of half the side, clipped at the border
    shifted = adv.DiffAugment(translation=0.25, cutout=0, brightness=0, contrast=0, fill=5.0)(torch.zeros(64, 1, 8, 8))
    assert (shifted == 5.0).any() and set(shifted.unique().tolist()) <= {0.0, 5.0}
    with pytest.raises(ValueError, match="translation"):
        adv.DiffAugment(translation=1.5)


def test_losses_and_r1():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert adv.d_loss("hinge", real, fake).item() == pytest.approx(0.25 + 0.5)
    assert adv.g_loss("hinge", fake).item() == pytest.approx(1.0)
    assert adv.g_loss("non_saturating", fake).item() == pytest.approx(torch.nn.functional.softplus(-fake).mean().item())
    lin = torch.nn.Linear(3, 1, bias=False)
    x = torch.randn(5, 3, requires_grad=True)
    penalty = adv.r1_penalty(lin(x).squeeze(1), x).item()
    assert penalty == pytest.approx(lin.weight.pow(2).sum().item(), rel=1e-5)
    with pytest.raises(ValueError, match="loss"):
        adv.check_loss("wasserstein")


@pytest.fixture
def gan(tmp_path):
    def make(*overrides):
        cfg = compose_train(tmp_path, ["model=gan", "debug=smoke", *overrides])
        pl.seed_everything(0)
        return instantiate(cfg.dataset.datamodule, "dataset.datamodule"), instantiate(cfg.model, "model")
    return make


def test_one_counted_step_per_batch_and_both_nets_train(gan, tmp_path):
    datamodule, model = gan()
    d_before = [p.clone() for p in model.discriminator.parameters()]
    trainer = fit(model, datamodule, tmp_path, steps=3)
    assert trainer.global_step == 3  # the generator's steps; D's are not counted
    opt_g, opt_d = (o.optimizer if hasattr(o, "optimizer") else o for o in trainer.optimizers)
    assert {int(s["step"]) for s in opt_g.state.values()} == {3}
    assert {int(s["step"]) for s in opt_d.state.values()} == {3}
    assert any(not torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))
    assert {"train/loss_g", "train/loss_d"} <= set(trainer.callback_metrics)


def test_grad_clip_norm_clips_both_optimizers(gan, tmp_path, monkeypatch):
    datamodule, model = gan("model.grad_clip_norm=0.01")
    calls = []
    original = model.clip_gradients
    monkeypatch.setattr(model, "clip_gradients", lambda opt, **kw: (calls.append(kw), original(opt, **kw)))
    fit(model, datamodule, tmp_path, steps=2)
    assert len(calls) == 4 and all(c["gradient_clip_val"] == 0.01 for c in calls)


def test_noise_is_the_latent_and_augmentation_can_be_off(gan):
    _, model = gan("model.augment=null", "model.loss=non_saturating", "model.r1_gamma=0")
    assert model.noise_shape() == (128,) and model.augment is None
    with pytest.raises(Exception, match="loss"):
        gan("model.loss=wgan")
