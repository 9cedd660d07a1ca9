"""VAE: a KL-regularized autoencoder (MONAI AutoencoderKL), a generative model on its own and the LDM's first stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets.autoencoderkl import AEKLDownsample
from torch import Tensor, nn

from synthmed.metrics import names
from synthmed.metrics import reconstruction as recon_metrics
from synthmed.models import adversarial as adv
from synthmed.models.base import GenerativeModule, OptimizerFactory

RECON_LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


def kl_divergence(mu: Tensor, sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch (MONAI's convention,
    so `kl_weight` values from MONAI's tutorials and Pinaya et al. transfer)."""
    kl = 0.5 * (mu.float().pow(2) + sigma.float().pow(2) - 2 * torch.log(sigma.float()) - 1)
    return kl.flatten(1).sum(1).mean()


class VAEModule(GenerativeModule):
    """KL-regularized autoencoder (Kingma & Welling 2014, https://arxiv.org/abs/1312.6114) in the form used as the
    first stage of latent diffusion (Rombach et al. 2022, https://arxiv.org/abs/2112.10752; Pinaya et al. 2022,
    https://arxiv.org/abs/2209.07162), with an optional patch adversarial loss (Esser et al. 2021,
    https://arxiv.org/abs/2012.09841) and an optional perceptual loss.

    Samples decode draws from the prior N(0, I) of the spatial latent. Validation logs reconstruction SSIM, PSNR
    and MAE of the posterior mean. Manual optimization: one autoencoder step per batch (counted in
    `global_step`) and, when the adversarial loss is on, one discriminator step (not counted).

    Args:
        autoencoder: MONAI `AutoencoderKL` (`encode(x) -> (mu, sigma)`, `decode(z)`).
        kl_weight: weight of the KL term (summed over latent elements) against the per-pixel mean reconstruction
            loss; small values favour reconstruction (LDM first stage), larger ones favour prior samples.
        recon_loss: `l1` or `l2`.
        discriminator: factory (`_partial_`) of a patch discriminator, `D(x)` -> list whose last entry is the
            score map (MONAI `PatchDiscriminator`); only built when `adversarial_weight` > 0.
        optimizer_d: partial optimizer of the discriminator (required when `adversarial_weight` > 0).
        adversarial_weight: weight of the generator-side adversarial loss; 0 disables the discriminator.
        adversarial_loss: `hinge` or `non_saturating`.
        adversarial_start: step from which the adversarial terms are used (reconstructions first make sense).
        perceptual: optional loss `perceptual(pred, target) -> scalar` (e.g. `monai.losses.PerceptualLoss`); it
            is kept out of the state dict, so checkpoints do not carry a pretrained network.
        perceptual_weight: its weight.
        name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm: see GenerativeModule.
    """

    family = "vae"

    def __init__(self, autoencoder: nn.Module, name: str, image_shape: Sequence[int], optimizer: OptimizerFactory,
                 kl_weight: float = 1e-4, recon_loss: str = "l1",
                 discriminator: Callable[[], nn.Module] | None = None, optimizer_d: OptimizerFactory | None = None,
                 adversarial_weight: float = 0.0, adversarial_loss: str = "hinge", adversarial_start: int = 0,
                 perceptual: Callable[[Tensor, Tensor], Tensor] | None = None, perceptual_weight: float = 0.0,
                 ema_decay: float | None = 0.0, sample_batch_size: int = 16,
                 grad_clip_norm: float | None = None) -> None:
        super().__init__(name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm)
        self.save_hyperparameters(ignore=["autoencoder", "discriminator", "optimizer", "optimizer_d", "perceptual"],
                                  logger=False)
        self._check(kl_weight, recon_loss, adversarial_weight, optimizer_d, perceptual, perceptual_weight)
        adv.check_loss(adversarial_loss)
        self.automatic_optimization = False
        self.autoencoder = autoencoder
        factor = 2 ** sum(isinstance(m, AEKLDownsample) for m in autoencoder.modules())
        if any(s % factor for s in self.image_shape[1:]):
            raise ValueError(f"image_shape {list(self.image_shape)}: every side must be divisible by the "
                             f"autoencoder's down-sampling factor {factor}")
        self.latent_shape = (int(autoencoder.latent_channels), *(s // factor for s in self.image_shape[1:]))
        self.discriminator = discriminator() if adversarial_weight > 0 else None
        self.optimizer_d_factory = optimizer_d
        self._perceptual = [perceptual] if perceptual is not None and perceptual_weight > 0 else []
        self.init_ema(autoencoder)

    @staticmethod
    def _check(kl_weight, recon_loss, adversarial_weight, optimizer_d, perceptual, perceptual_weight) -> None:
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {sorted(RECON_LOSSES)}, got '{recon_loss}'")
        if adversarial_weight < 0 or perceptual_weight < 0:
            raise ValueError(f"adversarial_weight and perceptual_weight must be >= 0, got {adversarial_weight}, "
                             f"{perceptual_weight}")
        if adversarial_weight > 0 and optimizer_d is None:
            raise ValueError("optimizer_d is required when adversarial_weight > 0")
        if perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual is required when perceptual_weight > 0")

    # ---- the first-stage interface (used by the LDM) --------------------------------------------------------
    def noise_shape(self) -> tuple[int, ...]:
        """The latent shape `[latent_channels, *spatial / 2**levels]`: samples decode prior draws of this shape."""
        return self.latent_shape

    def encode(self, x: Tensor, sample: bool = False) -> Tensor:
        """Images `[B, C, *spatial]` -> latents `[B, *latent_shape]`: the posterior mean, or a draw when `sample`."""
        net = self.sampling_net()
        mu, sigma = net.encode(x)
        return net.sampling(mu, sigma) if sample else mu

    def decode(self, z: Tensor) -> Tensor:
        """Latents `[B, *latent_shape]` -> images `[B, C, *spatial]` (not clamped)."""
        return self.sampling_net().decode(z)

    def generate(self, noise: Tensor, cond: dict | None = None,
                 generators: list[torch.Generator] | None = None) -> Tensor:
        return self.decode(noise)

    # ---- training ---------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opts = [self.optimizer_factory(self.autoencoder.parameters())]
        if self.discriminator is not None:
            opts.append(self.optimizer_d_factory(self.discriminator.parameters()))
        return opts

    def _losses(self, x: Tensor, recon: Tensor, mu: Tensor, sigma: Tensor) -> dict[str, Tensor]:
        out = {names.TRAIN_LOSS_RECON: RECON_LOSSES[self.hparams.recon_loss](recon.float(), x.float()),
               names.TRAIN_LOSS_KL: kl_divergence(mu, sigma)}
        out[names.TRAIN_LOSS] = out[names.TRAIN_LOSS_RECON] + self.hparams.kl_weight * out[names.TRAIN_LOSS_KL]
        if self._perceptual:
            loss_p = self._perceptual[0].to(x.device)(recon.float(), x.float())
            out[names.TRAIN_LOSS] = out[names.TRAIN_LOSS] + self.hparams.perceptual_weight * loss_p
        return out

    def training_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["image"]
        opts = self.optimizers()
        opt_ae, opt_d = (opts[0], opts[1]) if isinstance(opts, list) else (opts, None)
        use_adv = opt_d is not None and self.global_step >= self.hparams.adversarial_start
        with self.toggled_optimizer(opt_ae):
            recon, mu, sigma = self.autoencoder(x)
            losses = self._losses(x, recon, mu, sigma)
            if use_adv:
                losses[names.TRAIN_LOSS_G] = adv.g_loss(self.hparams.adversarial_loss, self.discriminator(recon)[-1])
                losses[names.TRAIN_LOSS] = (losses[names.TRAIN_LOSS]
                                            + self.hparams.adversarial_weight * losses[names.TRAIN_LOSS_G])
            opt_ae.zero_grad(set_to_none=True)
            self.manual_backward(losses[names.TRAIN_LOSS])
            opt_ae.step()
        if use_adv:
            with self.toggled_optimizer(opt_d):
                losses[names.TRAIN_LOSS_D] = self._discriminator_step(x, recon.detach(), opt_d)
        for key, value in losses.items():
            self.log(key, value.detach(), prog_bar=key == names.TRAIN_LOSS, batch_size=x.shape[0])

    def _discriminator_step(self, x: Tensor, recon: Tensor, opt_d) -> Tensor:
        loss = adv.d_loss(self.hparams.adversarial_loss, self.discriminator(x)[-1], self.discriminator(recon)[-1])
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        adv.step_uncounted(self, opt_d)
        return loss.detach()

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        x = batch["image"]
        net = self.sampling_net()
        mu, sigma = net.encode(x)
        recon = net.decode(mu)
        loss = self._losses(x, recon, mu, sigma)[names.TRAIN_LOSS]
        metrics = {names.PSNR: recon_metrics.psnr, names.MAE: recon_metrics.mae}
        if min(x.shape[2:]) >= recon_metrics.SSIM_KERNEL:  # SSIM needs an 11-pixel window inside the image
            metrics[names.SSIM] = recon_metrics.ssim
        self.log_val_means({names.VAL_LOSS: loss, **{key: fn(recon.clamp(-1, 1), x).mean()
                                                     for key, fn in metrics.items()}}, x.shape[0])
        return loss
