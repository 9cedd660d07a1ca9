"""Conditional diffusion for image-to-image translation: the denoiser sees the source image concatenated to x_t."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from synthmed.metrics import names
from synthmed.models.base import OptimizerFactory
from synthmed.models.noise import GaussianDiffusion, RectifiedFlow
from synthmed.models.translator import Translator
from synthmed.nets.checkpointing import checkpoint_unet


class ConcatSource:
    """The glue between a translation denoiser and a noise process: `net(cat(x_t, source), timesteps)`.

    The processes call `net(x_t, timesteps=t, **net_kwargs)`, so the source travels as the `source` keyword and the
    processes' loss and sampling loops are used as they are.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def __call__(self, x: Tensor, timesteps: Tensor, source: Tensor, **net_kwargs) -> Tensor:
        return self.net(torch.cat([x, source.to(x)], dim=1), timesteps=timesteps, **net_kwargs)


class CondDDPMModule(Translator):
    """Source-conditioned diffusion (Palette, Saharia et al. 2022, https://arxiv.org/abs/2111.05826): a DDPM on the
    target whose denoiser gets the source image as extra input channels, sampled with DDIM (or any process of
    conf/model/process/).

    Args:
        net: partial denoiser, called with `in_channels=C + C_src` (target + source channels); the built net maps
            `x [B, C + C_src, *spatial], timesteps=[B]` to `[B, C, *spatial]` (MONAI `DiffusionModelUNet`).
        process: the noise process (GaussianDiffusion with DDIM sampling, RectifiedFlow, ...).
        source_channels, mask_threshold, mask_dilate, name, image_shape, optimizer, ema_decay, sample_batch_size,
            grad_clip_norm: see Translator.
        activation_checkpointing: recompute the UNet blocks' activations in backward (less memory; see DDPMModule).
    """

    family = "diffusion"
    test_overrides = ("model.process.num_inference_steps=3",)  # the contract test samples with 3 steps

    def __init__(self, net: Callable[..., nn.Module], process: GaussianDiffusion | RectifiedFlow, name: str,
                 image_shape: Sequence[int], optimizer: OptimizerFactory, ema_decay: float | None = 0.999,
                 sample_batch_size: int = 16, grad_clip_norm: float | None = 1.0, source_channels: int | None = None,
                 mask_threshold: float | None = None, mask_dilate: int = 2,
                 activation_checkpointing: bool = False) -> None:
        super().__init__(name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm, source_channels,
                         mask_threshold, mask_dilate)
        self.save_hyperparameters(ignore=["net", "process", "optimizer"], logger=False)
        net = net(in_channels=self.image_shape[0] + self.source_channels)
        if getattr(net, "out_channels", self.image_shape[0]) != self.image_shape[0]:
            raise ValueError(f"net.out_channels must equal the target channels {self.image_shape[0]}, "
                             f"got {net.out_channels}")
        if activation_checkpointing:
            checkpoint_unet(net)
        self.net, self.process = net, process
        self.init_ema(net)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        source, target = self.pair(batch)
        loss = self.process.loss(ConcatSource(self.net), target, source=source)
        self.log(names.TRAIN_LOSS, loss, prog_bar=True, batch_size=len(source))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        source, target = self.pair(batch)
        gen = torch.Generator().manual_seed(batch_idx)  # fixed: val/loss comparable across evaluations
        loss = self.process.loss(ConcatSource(self.sampling_net()), target, generator=gen, source=source)
        self.log_val_means({names.VAL_LOSS: loss}, len(source))
        self.log_translation_metrics(batch, batch_idx)

    def generate(self, noise: Tensor, cond: dict | None = None,
                 generators: list[torch.Generator] | None = None) -> Tensor:
        return self.process.sample(ConcatSource(self.sampling_net()), noise, generators, source=cond["source"])
