"""DDPM: a denoising diffusion model in image space (2D or 3D through the network's `spatial_dims`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from synthmed.metrics import names
from synthmed.models.base import GenerativeModule, OptimizerFactory
from synthmed.models.noise import GaussianDiffusion, RectifiedFlow


class DDPMModule(GenerativeModule):
    """Image-space diffusion (Ho et al. 2020, https://arxiv.org/abs/2006.11239) for medical images, as in
    Pinaya et al. 2022 (https://arxiv.org/abs/2209.07162) but without the autoencoder.

    The network (MONAI `DiffusionModelUNet` in conf/model/ddpm.yaml) knows nothing about noise; `process`
    (GaussianDiffusion for DDPM/DDIM, RectifiedFlow) owns timesteps, targets and the sampling loop.

    Args:
        net: denoiser `net(x_t [B, C, *spatial], timesteps=[B]) -> [B, C, *spatial]`.
        process: the noise process.
        name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm: see GenerativeModule.
    """

    family = "diffusion"

    def __init__(self, net: nn.Module, process: GaussianDiffusion | RectifiedFlow, name: str,
                 image_shape: Sequence[int], optimizer: OptimizerFactory, ema_decay: float | None = 0.999,
                 sample_batch_size: int = 16, grad_clip_norm: float | None = 1.0) -> None:
        super().__init__(name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm)
        # Objects (net, process, optimizer) are rebuilt from the recorded config; checkpoints keep plain values.
        self.save_hyperparameters(ignore=["net", "process", "optimizer"], logger=False)
        self.net = net
        self.process = process
        self.init_ema(net)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.process.loss(self.net, batch["image"])
        self.log(names.TRAIN_LOSS, loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        # A fixed generator per batch: the validation loss is comparable across evaluations and does not
        # consume the global RNG (so validating more often cannot change training).
        gen = torch.Generator().manual_seed(batch_idx)
        loss = self.process.loss(self.sampling_net(), batch["image"], generator=gen)
        self.log(names.VAL_LOSS, loss, batch_size=batch["image"].shape[0], sync_dist=True)
        return loss

    def generate(self, noise: Tensor, cond: dict | None = None,
                 generators: list[torch.Generator] | None = None) -> Tensor:
        return self.process.sample(self.sampling_net(), noise, generators)
