"""GAN: a residual generator/discriminator pair for small medical data sets (2D or 3D)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from synthmed.metrics import names
from synthmed.models import adversarial as adv
from synthmed.models.base import GenerativeModule, OptimizerFactory
from synthmed.models.conditioning import Conditioning, ConditionPrior


class GANModule(GenerativeModule):
    """A modern small-data GAN: SNGAN-style residual nets (Miyato et al. 2018, https://arxiv.org/abs/1802.05957),
    hinge or non-saturating loss, lazy R1 penalty (Mescheder et al. 2018, https://arxiv.org/abs/1801.04406;
    Karras et al. 2020, https://arxiv.org/abs/1912.04958), DiffAugment on real and fake images
    (Zhao et al. 2020, https://arxiv.org/abs/2006.10738) and an EMA generator for sampling
    (Yazici et al. 2019, https://arxiv.org/abs/1806.04498).

    Lightning manual optimization: per batch one discriminator step, then one generator step. Only the generator
    step advances `global_step`, so `trainer.max_steps` counts batches as in every other family.

    With `cond`, labels/covariates (synthmed/models/conditioning.py, as a vector `c [B, D]`) reach the generator's
    conditional normalization and the projection discriminator; fakes are made for the real batch's conditions.
    Asked for no condition, a conditional GAN draws conditions seen in training (`ConditionPrior`).

    Args:
        generator: partial constructor, called with `cond_dim`, of
            `generator(z [B, latent_dim], c [B, D] | None) -> [B, C, *spatial]` in [-1, 1], with `latent_dim` and
            `output_shape` attributes (synthmed.nets.gan.ResNetGenerator).
        discriminator: partial constructor, called with `cond_dim`, of
            `discriminator(x [B, C, *spatial], c [B, D] | None) -> scores [B]` (raw, no sigmoid).
        optimizer: partial optimizer of the generator.
        optimizer_d: partial optimizer of the discriminator.
        loss: `hinge` or `non_saturating`.
        r1_gamma: weight of the R1 penalty `gamma / 2 * E||grad D(x_real)||^2`; 0 disables it.
        r1_every: compute R1 every this many steps, scaled by it (lazy regularization).
        augment: DiffAugment applied to every discriminator input; `None` disables augmentation.
        cond: None, `label`, `attrs` or `both`.
        num_classes: label classes (cond=label|both).
        attr_ranges: covariate -> [min, max] in its unit, mapped to [0, 1] (cond=attrs|both).
        prior_size: training conditions kept for sampling without a condition.
        name, image_shape, ema_decay, sample_batch_size, grad_clip_norm: see GenerativeModule.
    """

    family = "gan"

    def __init__(self, generator: Callable[..., nn.Module], discriminator: Callable[..., nn.Module], name: str,
                 image_shape: Sequence[int], optimizer: OptimizerFactory, optimizer_d: OptimizerFactory,
                 loss: str = "hinge", r1_gamma: float = 0.1, r1_every: int = 4,
                 augment: adv.DiffAugment | None = None, ema_decay: float | None = 0.999,
                 sample_batch_size: int = 16, grad_clip_norm: float | None = None, cond: str | None = None,
                 num_classes: int = 2, attr_ranges: Mapping[str, Sequence[float]] | None = None,
                 prior_size: int = 4096) -> None:
        super().__init__(name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm)
        self.save_hyperparameters(ignore=["generator", "discriminator", "optimizer", "optimizer_d", "augment"],
                                  logger=False)
        adv.check_loss(loss)
        if r1_gamma < 0:
            raise ValueError(f"r1_gamma must be >= 0, got {r1_gamma}")
        if r1_every < 1:
            raise ValueError(f"r1_every must be >= 1, got {r1_every}")
        if prior_size < 1:
            raise ValueError(f"prior_size must be >= 1, got {prior_size}")
        self.conditioning = Conditioning(cond, num_classes, attr_ranges)
        generator = generator(cond_dim=self.conditioning.dim)
        discriminator = discriminator(cond_dim=self.conditioning.dim)
        if tuple(generator.output_shape) != self.image_shape:
            raise ValueError(f"generator: output shape {list(generator.output_shape)} != image_shape "
                             f"{list(self.image_shape)}")
        self.automatic_optimization = False
        self.generator, self.discriminator = generator, discriminator
        self.optimizer_d_factory = optimizer_d
        self.loss_type, self.r1_gamma, self.r1_every = loss, r1_gamma, r1_every
        self.augment = augment
        self.prior = ConditionPrior(prior_size, self.conditioning.dim) if cond else None
        self.init_ema(generator)

    def noise_shape(self) -> tuple[int, ...]:
        """sample()'s per-sample noise is the latent vector z `[latent_dim]`."""
        return (self.generator.latent_dim,)

    def configure_optimizers(self):
        return [self.optimizer_factory(self.generator.parameters()),
                self.optimizer_d_factory(self.discriminator.parameters())]

    def _aug(self, x: Tensor) -> Tensor:
        return self.augment(x) if self.augment is not None else x

    def _z(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape[0], self.generator.latent_dim, device=like.device, dtype=like.dtype)

    def _condition(self, cond: dict | None) -> Tensor | None:
        """The condition vector `[B, D]` of a condition dict, None for an unconditional model."""
        if not self.conditioning.enabled:
            return None
        return self.conditioning.encode(cond, self.device)[:, 0]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real = batch["image"]
        c = self._condition(self.conditioning.from_batch(batch))  # None for an unconditional GAN
        if self.prior is not None:
            self.prior.add(c)
        opt_g, opt_d = self.optimizers()
        with self.toggled_optimizer(opt_d):
            loss_d = self._discriminator_step(real, c, opt_d)
        with self.toggled_optimizer(opt_g):
            fake = self.generator(self._z(real), c)
            loss_g = adv.g_loss(self.loss_type, self.discriminator(self._aug(fake), c))
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()
        self.log(names.TRAIN_LOSS_G, loss_g, prog_bar=True, batch_size=real.shape[0])
        self.log(names.TRAIN_LOSS_D, loss_d, prog_bar=True, batch_size=real.shape[0])

    def _discriminator_step(self, real: Tensor, c: Tensor | None, opt_d) -> Tensor:
        with torch.no_grad():
            fake = self.generator(self._z(real), c)
        lazy_r1 = self.r1_gamma > 0 and self.global_step % self.r1_every == 0
        # R1 is the gradient at D's input, i.e. at the augmented real images (as in StyleGAN2-ADA).
        real_in = self._aug(real).detach().requires_grad_(lazy_r1)
        scores_real = self.discriminator(real_in, c)
        loss = adv.d_loss(self.loss_type, scores_real, self.discriminator(self._aug(fake), c))
        if lazy_r1:
            loss = loss + 0.5 * self.r1_gamma * self.r1_every * adv.r1_penalty(scores_real, real_in)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        adv.step_uncounted(self, opt_d)
        return loss.detach()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Nothing to score per batch (a GAN has no likelihood); the loop runs so that the evaluation callbacks
        # (sample grids, generation metrics) fire at every validation, as for every family.
        return None

    def generate(self, noise: Tensor, cond: dict | None = None,
                 generators: list[torch.Generator] | None = None) -> Tensor:
        c = self._condition(cond) if cond is not None else None
        if c is None and self.prior is not None:
            gens = generators or self.per_sample_generators(noise.shape[0])
            c = self.prior.draw(gens).to(noise)
        return self.sampling_net()(noise, c)
