"""DDPM: a denoising diffusion model in image space (2D or 3D through the network's `spatial_dims`),
unconditional or conditioned on class labels and covariates with classifier-free guidance."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from synthmed.metrics import names
from synthmed.models.base import GenerativeModule, OptimizerFactory
from synthmed.models.conditioning import GuidedDenoising
from synthmed.models.noise import GaussianDiffusion, RectifiedFlow
from synthmed.nets.checkpointing import checkpoint_unet


class DDPMModule(GuidedDenoising, GenerativeModule):
    """Image-space diffusion (Ho et al. 2020, https://arxiv.org/abs/2006.11239) for medical images, as in
    Pinaya et al. 2022 (https://arxiv.org/abs/2209.07162) but without the autoencoder.

    The network (MONAI `DiffusionModelUNet` in conf/model/ddpm.yaml) knows nothing about noise; `process`
    (GaussianDiffusion for DDPM/DDIM, RectifiedFlow) owns timesteps, targets and the sampling loop. With
    `cond`, labels/covariates reach the UNet's cross-attention as a context vector (synthmed/models/conditioning.py),
    dropped with probability `cond_drop_prob` in training so that sampling can use classifier-free guidance.

    Args:
        net: partial constructor of the denoiser `net(x_t [B, C, *spatial], timesteps=[B], context=[B, 1, D])`;
            called here, with cross-attention switched on when the model is conditional.
        process: the noise process.
        cond: None, `label`, `attrs` or `both`.
        num_classes: label classes (cond=label|both).
        attr_ranges: covariate -> [min, max] in its unit, mapped to [0, 1] (cond=attrs|both).
        cond_drop_prob: probability of training a step's image unconditionally (classifier-free guidance).
        guidance_scale: guidance weight at sampling; 1 = plain conditional, > 1 = stronger adherence.
        activation_checkpointing: recompute the UNet blocks' activations in backward instead of storing them
            (less memory, ~30 % more compute; same values: synthmed/nets/checkpointing.py). For large 3D volumes.
        name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm: see GenerativeModule.
    """

    family = "diffusion"
    test_overrides = ("model.process.num_inference_steps=3",)  # the contract test samples with 3 steps

    def __init__(self, net: Callable[..., nn.Module], process: GaussianDiffusion | RectifiedFlow, name: str,
                 image_shape: Sequence[int], optimizer: OptimizerFactory, ema_decay: float | None = 0.999,
                 sample_batch_size: int = 16, grad_clip_norm: float | None = 1.0, cond: str | None = None,
                 num_classes: int = 2, attr_ranges: Mapping[str, Sequence[float]] | None = None,
                 cond_drop_prob: float = 0.1, guidance_scale: float = 3.0,
                 activation_checkpointing: bool = False) -> None:
        super().__init__(name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm)
        # Objects (net, process, optimizer) are rebuilt from the recorded config; checkpoints keep plain values.
        self.save_hyperparameters(ignore=["net", "process", "optimizer"], logger=False)
        self.net = self.init_conditioning(net, cond, num_classes, attr_ranges, cond_drop_prob, guidance_scale)
        if activation_checkpointing:
            checkpoint_unet(self.net)
        self.process = process
        self.init_ema(self.net)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.process.loss(self.net, batch["image"], **self.context(batch, drop=True))
        self.log(names.TRAIN_LOSS, loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        # A fixed generator per batch: the validation loss is comparable across evaluations and does not
        # consume the global RNG (so validating more often cannot change training).
        gen = torch.Generator().manual_seed(batch_idx)
        loss = self.process.loss(self.sampling_net(), batch["image"], generator=gen, **self.context(batch))
        self.log_val_means({names.VAL_LOSS: loss}, batch["image"].shape[0])
        return loss

    def generate(self, noise: Tensor, cond: dict | None = None,
                 generators: list[torch.Generator] | None = None) -> Tensor:
        return self.process.sample(self.denoiser(noise.shape[0], cond), noise, generators)
