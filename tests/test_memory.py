"""3D memory options: activation checkpointing (ddpm, cond_ddpm, ldm, vae), tiled decoding and the latent cache
(ldm). Each is checked against the plain path on tiny inputs: same values, same gradients, fewer encoder calls."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from torch import nn

from synthmed.config import instantiate
from synthmed.models.latents import LatentCache, TiledDecoder
from synthmed.nets.checkpointing import checkpoint_unet, is_checkpointed
from synthmed.tracking import first_stage
from tests.conftest import compose_train
from tests.test_models_ldm import vae_ckpt  # noqa: F401  (module fixture: a 2-step VAE run folder)

SMOKE3D = ["debug=smoke", "dataset=phantom3d", "dataset.datamodule.dataset.n_train=8",
           "dataset.datamodule.dataset.n_val=4", "dataset.datamodule.dataset.n_test=4",
           "model.process.num_inference_steps=2"]


def tiny_unet(cond_dim: int | None = None) -> DiffusionModelUNet:
    extra = {"with_conditioning": True, "cross_attention_dim": cond_dim} if cond_dim else {}
    return DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=[8, 16, 16],
                              attention_levels=[False, False, True], num_res_blocks=1, norm_num_groups=8,
                              num_head_channels=8, **extra)


def forward_backward(net: nn.Module, x, t, **kw) -> tuple[torch.Tensor, list[torch.Tensor]]:
    net.train()
    out = net(x, timesteps=t, **kw)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in net.parameters()]


# ---- activation checkpointing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cond_dim", [None, 3])
def test_checkpointed_unet_has_plain_outputs_and_gradients(cond_dim):
    torch.manual_seed(0)
    plain = tiny_unet(cond_dim)
    ckpt = checkpoint_unet(copy.deepcopy(plain))
    assert is_checkpointed(ckpt) and not is_checkpointed(plain)
    x, t = torch.randn(2, 1, 8, 8, 8), torch.tensor([3, 700])
    kw = {"context": torch.rand(2, 1, cond_dim)} if cond_dim else {}
    out0, g0 = forward_backward(plain, x, t, **kw)
    out1, g1 = forward_backward(ckpt, x, t, **kw)
    torch.testing.assert_close(out1, out0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_checkpointed_unet_state_dict_is_interchangeable():
    torch.manual_seed(0)
    plain = tiny_unet()
    torch.manual_seed(1)
    ckpt = checkpoint_unet(tiny_unet())
    assert set(ckpt.state_dict()) == set(plain.state_dict())  # no wrapper prefix in checkpoints
    ref = {k: v.clone() for k, v in plain.state_dict().items()}
    assert any(not torch.equal(v, ref[k]) for k, v in ckpt.state_dict().items())  # two different nets first
    ckpt.load_state_dict(ref)  # a plain checkpoint loads into the checkpointed net, strictly
    assert all(torch.equal(v, ref[k]) for k, v in ckpt.state_dict().items())


def test_checkpointing_refuses_other_networks():
    with pytest.raises(ValueError, match="DiffusionModelUNet"):
        checkpoint_unet(nn.Conv3d(1, 1, 3))


def saved_bytes(net: nn.Module, x, t) -> int:
    """Bytes of tensors autograd keeps for backward during one forward (what checkpointing removes)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(x, timesteps=t).mean().backward()
    return total


def test_checkpointing_keeps_fewer_activations():
    plain = tiny_unet()
    ckpt = checkpoint_unet(copy.deepcopy(plain))
    x, t = torch.randn(1, 1, 16, 16, 16), torch.tensor([5])
    kept, kept_ckpt = saved_bytes(plain, x, t), saved_bytes(ckpt, x, t)
    assert kept_ckpt < 0.5 * kept, (kept_ckpt, kept)


@pytest.mark.slow  # ~20-35 s on a loaded 2-core machine: two 3D/2D models and a data module
@pytest.mark.parametrize("model_name", ["ddpm", "cond_ddpm"])
def test_model_config_switches_checkpointing_and_keeps_the_loss(tmp_path, model_name):
    data = ["dataset=phantom2d_pairs"] if model_name == "cond_ddpm" else ["dataset=phantom3d"]
    overrides = [*SMOKE3D, f"model={model_name}", *data]
    models = []
    for flag in (False, True):
        cfg = compose_train(tmp_path, [*overrides, f"model.activation_checkpointing={str(flag).lower()}"])
        pl.seed_everything(0)
        models.append(instantiate(cfg.model, "model"))
    assert [is_checkpointed(m.net) for m in models] == [False, True]
    models[1].load_state_dict(models[0].state_dict())
    batch = next(iter(instantiate(cfg.dataset.datamodule, "dataset.datamodule").train_dataloader()))
    losses, grads = [], []
    for model in models:
        model.train()
        torch.manual_seed(1)
        loss = model.training_step(batch, 0)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in model.net.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-7)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_vae_config_reaches_monai_checkpointing(tmp_path):
    cfg = compose_train(tmp_path, [*SMOKE3D[:4], "model=vae", "model.autoencoder.use_checkpoint=true"])
    model = instantiate(cfg.model, "model")
    assert model.autoencoder.use_checkpoint is True
    plain = copy.deepcopy(model.autoencoder)
    plain.use_checkpoint = False
    x = torch.rand(1, 1, 16, 16, 16) * 2 - 1
    outs = []
    for net in (plain, model.autoencoder):
        torch.manual_seed(0)  # the forward draws the latent sample
        recon, mu, _ = net(x)
        (recon.square().mean() + mu.square().mean()).backward()
        outs.append((recon.detach(), [p.grad for p in net.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ---- tiled decoding -------------------------------------------------------------------------------------------------
class PointwiseDecoder(nn.Module):
    """A decoder without spatial context (1x1 convolution, then nearest up-sampling by 4): its tiled decode must
    equal the whole decode wherever the tiles are cut and however they are blended."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(3, 2, 1)

    def forward(self, z):
        return nn.functional.interpolate(torch.tanh(self.conv(z)), scale_factor=4, mode="nearest")


@pytest.mark.parametrize("shape,tile,overlap,mode", [
    ((2, 3, 12, 10), (4, 4), 0.5, "gaussian"),
    ((1, 3, 9, 8, 7), (4, 5, 3), 0.25, "gaussian"),
    ((1, 3, 8, 8, 8), (5, 5, 5), 0.0, "constant"),
])
def test_tiled_decode_stitches_tiles_exactly(shape, tile, overlap, mode):
    torch.manual_seed(0)
    decoder = PointwiseDecoder(len(shape) - 2)
    z = torch.randn(shape)
    tiled = TiledDecoder(tile, overlap, mode)
    assert tiled.tiles_needed(shape[2:])
    with torch.no_grad():
        torch.testing.assert_close(tiled(decoder, z), decoder(z), rtol=1e-5, atol=1e-6)


def test_one_tile_is_the_plain_decode_of_a_monai_autoencoder():
    torch.manual_seed(0)
    ae = AutoencoderKL(spatial_dims=3, in_channels=1, out_channels=1, channels=[8, 8, 8],
                       attention_levels=[False] * 3, latent_channels=3, num_res_blocks=1, norm_num_groups=8,
                       with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False).eval()
    z = torch.randn(1, 3, 6, 6, 6)
    with torch.no_grad():
        assert torch.equal(TiledDecoder((6, 6, 6))(ae.decode, z), ae.decode(z))
        assert torch.equal(TiledDecoder(None)(ae.decode, z), ae.decode(z))
        tiled = TiledDecoder((4, 4, 4), 0.5)(ae.decode, z)
    assert tiled.shape == (1, 1, 24, 24, 24)  # several tiles: up-sampled by the decoder's factor of 4


@pytest.mark.parametrize("kwargs,match", [({"tile": (0, 4)}, "decode_tile"), ({"overlap": 1.0}, "decode_overlap"),
                                          ({"mode": "max"}, "decode_blend")])
def test_tiled_decoder_names_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TiledDecoder(**{"tile": (4, 4), **kwargs})


# ---- latent cache ---------------------------------------------------------------------------------------------------
class CountingEncoder:
    def __init__(self) -> None:
        self.images = 0

    def __call__(self, x):
        self.images += x.shape[0]
        return x[:, :, ::4, ::4] * 2.0


def test_latent_cache_encodes_each_image_once():
    cache, encode = LatentCache(), CountingEncoder()
    images = {k: torch.randn(1, 8, 8) for k in "abcd"}
    for ids in (["a", "b", "a"], ["b", "c"], ["d", "a", "c", "b"]):  # duplicates and repeats, as a sampler draws
        z = cache(ids, torch.stack([images[k] for k in ids]), encode)
        torch.testing.assert_close(z, torch.stack([images[k] for k in ids])[:, :, ::4, ::4] * 2.0)
    assert encode.images == 4 and len(cache) == 4 and (cache.hits, cache.misses) == (5, 4)


def build_ldm(tmp_path, ckpt, *overrides):
    cfg = compose_train(tmp_path, ["model=ldm", "debug=smoke", "model.process.num_inference_steps=2",
                                   f"model.autoencoder='{ckpt}'", "dataset.datamodule.dataset.n_train=8",
                                   *overrides])
    pl.seed_everything(0)
    return cfg, first_stage.build_model(cfg)[0]  # as `synthmed train` builds it: the VAE resolved and loaded


def test_ldm_latent_cache_trains_on_the_same_latents_with_one_encoding_per_image(tmp_path, vae_ckpt):  # noqa: F811
    cfg, cached = build_ldm(tmp_path, vae_ckpt, "model.latent_cache=true")
    _, plain = build_ldm(tmp_path, vae_ckpt)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    encode = CountingEncoder()
    vae_encode = cached.vae.encode
    cached.vae.encode = lambda x: (encode(x), vae_encode(x))[1]
    for _epoch in range(2):
        for batch in datamodule.train_dataloader():
            torch.testing.assert_close(cached.latents(batch["image"], cached._train_ids(batch)),
                                       plain.latents(batch["image"]), rtol=1e-5, atol=1e-6)
    assert encode.images == 8  # two epochs over 8 training images: each encoded once
    with pytest.raises(KeyError, match="latent_cache"):
        cached._train_ids({"image": batch["image"]})


@pytest.mark.slow  # ~28 s on a loaded 2-core machine: four LDMs built and sampled
def test_ldm_samples_larger_volumes_with_tiled_decoding(tmp_path, vae_ckpt):  # noqa: F811
    gen = lambda: torch.Generator().manual_seed(0)
    _, plain = build_ldm(tmp_path, vae_ckpt)
    _, one_tile = build_ldm(tmp_path, vae_ckpt, "model.decode_tile=[4,4]")  # smoke latents are 4x4: one tile
    one_tile.load_state_dict(plain.state_dict())
    assert torch.equal(one_tile.sample(2, gen()), plain.sample(2, gen()))
    _, large = build_ldm(tmp_path, vae_ckpt, "model.decode_tile=[4,4]", "model.sample_size=[32,24]")
    assert large.noise_shape() == (3, 8, 6)
    out = large.sample(2, gen())
    assert out.shape == (2, 1, 32, 24) and out.abs().max() <= 1
    with pytest.raises(InstantiationException, match="sample_size"):
        build_ldm(tmp_path, vae_ckpt, "model.sample_size=[30,24]")
