"""pix2pix, a paired image-to-image translation GAN (the translator contract is in translator.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthmed.metrics import names
from synthmed.models import adversarial as adv
from synthmed.models.base import OptimizerFactory
from synthmed.models.translator import Translator

log = logging.getLogger(__name__)


class Pix2PixModule(Translator):
    """pix2pix (Isola et al. 2017, https://arxiv.org/abs/1611.07004): a U-Net generator trained with an L1 loss to
    the paired target plus a conditional PatchGAN adversarial loss, for MRI -> CT or within one modality.
    Deterministic given the source: `sample()` ignores its noise.

    Lightning manual optimization: per batch one discriminator step, then one generator step; only the generator
    step advances `global_step`.

    Args:
        generator: `generator(source [B, C_src, *spatial]) -> [B, C, *spatial]` (MONAI `BasicUNet`); its output passes
            through tanh into [-1, 1].
        discriminator: partial, called with `in_channels=C_src + C`; the built net maps `cat(source, image)` to a
            list whose last entry is the patch score map of raw logits (MONAI `PatchDiscriminator`).
        optimizer: partial optimizer of the generator; `optimizer_d`: of the discriminator.
        loss: adversarial loss, `non_saturating` (the paper's) or `hinge`.
        lambda_l1: weight of the L1 term (100 in the paper).
        source_channels, mask_threshold, mask_dilate, name, image_shape, ema_decay, sample_batch_size,
            grad_clip_norm: see Translator.
    """

    family = "gan"
    uses_noise = False

    def __init__(self, generator: nn.Module, discriminator: Callable[..., nn.Module], name: str,
                 image_shape: Sequence[int], optimizer: OptimizerFactory, optimizer_d: OptimizerFactory,
                 loss: str = "non_saturating", lambda_l1: float = 100.0, ema_decay: float | None = None,
                 sample_batch_size: int = 16, grad_clip_norm: float | None = None, source_channels: int | None = None,
                 mask_threshold: float | None = None, mask_dilate: int = 2) -> None:
        super().__init__(name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm, source_channels,
                         mask_threshold, mask_dilate)
        self.save_hyperparameters(ignore=["generator", "discriminator", "optimizer", "optimizer_d"], logger=False)
        adv.check_loss(loss)
        if lambda_l1 < 0:
            raise ValueError(f"lambda_l1 must be >= 0, got {lambda_l1}")
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator(in_channels=self.source_channels + self.image_shape[0])
        self.optimizer_d_factory = optimizer_d
        self.loss_type, self.lambda_l1 = loss, lambda_l1
        self.init_ema(generator)

    def configure_optimizers(self):
        return [self.optimizer_factory(self.generator.parameters()),
                self.optimizer_d_factory(self.discriminator.parameters())]

    def _score(self, source: Tensor, image: Tensor) -> Tensor:
        return self.discriminator(torch.cat([source, image], dim=1))[-1]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        source, target = self.pair(batch)
        opt_g, opt_d = self.optimizers()
        fake = torch.tanh(self.generator(source))
        with self.toggled_optimizer(opt_d):
            loss_d = adv.d_loss(self.loss_type, self._score(source, target), self._score(source, fake.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            adv.step_uncounted(self, opt_d)
        with self.toggled_optimizer(opt_g):
            loss_l1 = F.l1_loss(fake, target)
            loss_g = adv.g_loss(self.loss_type, self._score(source, fake)) + self.lambda_l1 * loss_l1
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()
        n = len(source)
        self.log(names.TRAIN_LOSS_G, loss_g, prog_bar=True, batch_size=n)
        self.log(names.TRAIN_LOSS_D, loss_d, prog_bar=True, batch_size=n)
        self.log(names.TRAIN_LOSS_RECON, loss_l1, batch_size=n)

    def noise_shape(self) -> tuple[int, ...]:
        """pix2pix reads no noise (its output is a function of the source): one number per sample, only for the
        device and dtype, instead of an image-sized draw per sample."""
        return (1,)

    def generate(self, noise: Tensor, cond: dict | None = None,
                 generators: list[torch.Generator] | None = None) -> Tensor:
        return torch.tanh(self.sampling_net()(cond["source"].to(noise)))
