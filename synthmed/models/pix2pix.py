"""Image-to-image translation: the translator contract (`Translator`) and pix2pix, a paired translation GAN.

A translator maps a source image (MR) to a target image (CT) of the same subject. It is a GenerativeModule whose
`sample(n, generator, cond={"source": x})` translates `x` `[n, C_src, *spatial]` into `[n, *image_shape]` in
[-1, 1]; training batches carry `image` (the source) and `target`. `validation_step` scores the translations
against the real targets in the target's native unit (HU for CT; synthmed/metrics/translation.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthmed.metrics import names
from synthmed.metrics.translation import translation_metrics
from synthmed.models import adversarial as adv
from synthmed.models.base import GenerativeModule, OptimizerFactory

log = logging.getLogger(__name__)


class Translator(GenerativeModule):
    """Base of the translators (pix2pix, cond_ddpm): source handling and translation metrics.

    `sample()` without a source (the sample-grid and generation-metric callbacks, the final evaluation of
    `synthmed train`) translates the val sources of the datamodule given to `attach_sources`, else of the attached
    trainer's: sample i gets val item `(offset + i) mod len(val)`, so it still depends only on the seed and i.

    Args:
        source_channels: channels of the source images (None: as many as the target's, `image_shape[0]`).
        mask_threshold: body mask threshold in the target's native unit (None: -500 HU for CT; see
            `synthmed.metrics.translation.body_mask`).
        mask_dilate: voxels of body mask dilation.
        name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm: see GenerativeModule.
    """

    requires_source = True  # sample() translates cond["source"] (tests/test_contract.py passes one)
    uses_noise = True  # False: the output is a function of the source alone (pix2pix)

    def __init__(self, name: str, image_shape: Sequence[int], optimizer: OptimizerFactory,
                 ema_decay: float | None = None, sample_batch_size: int = 16, grad_clip_norm: float | None = None,
                 source_channels: int | None = None, mask_threshold: float | None = None,
                 mask_dilate: int = 2) -> None:
        super().__init__(name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm)
        self.source_channels = self.image_shape[0] if source_channels is None else int(source_channels)
        if self.source_channels < 1:
            raise ValueError(f"source_channels must be >= 1, got {source_channels}")
        if mask_dilate < 0:
            raise ValueError(f"mask_dilate must be >= 0, got {mask_dilate}")
        self.mask_threshold, self.mask_dilate = mask_threshold, mask_dilate

    # ---- the source ------------------------------------------------------------------------------------------
    @staticmethod
    def pair(batch: dict) -> tuple[Tensor, Tensor]:
        """(source, target) of a training batch; a clear error for data sets without paired targets."""
        if "target" not in batch:
            raise KeyError("translators train on paired items: this data set's items have no 'target' (use "
                           "dataset=phantom2d_pairs, phantom2d/3d or paired_nifti)")
        return batch["image"], batch["target"]

    def attach_sources(self, datamodule) -> None:
        """Take the sources of cond-less `sample()` calls from this datamodule's val split (no trainer needed)."""
        self._source_data = [datamodule]  # a list: not an attribute Lightning or a checkpoint should see

    def reference_sources(self, n: int, offset: int = 0) -> Tensor:
        """Val-split sources `(offset + i) mod len(val)`, i < n, of the attached datamodule or trainer's."""
        attached = getattr(self, "_source_data", None)
        datamodule = attached[0] if attached else getattr(self._trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError(f"{type(self).__name__}.sample() needs cond={{'source': x}} with x [n, C, *spatial] "
                             "(no datamodule is attached to take val sources from: see attach_sources)")
        val = datamodule.split("val")
        return torch.stack([val[(offset + i) % len(val)]["image"] for i in range(n)])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, cond: dict | None = None,
               offset: int = 0) -> Tensor:
        """Translate `cond["source"]` `[n, C_src, *spatial]` into `[n, *image_shape]` (see GenerativeModule.sample).

        Without `cond["source"]`, val sources of the attached datamodule are translated (class docstring).
        """
        cond = dict(cond or {})
        if cond.get("source") is None:
            cond["source"] = self.reference_sources(n, offset)
        source = cond["source"]
        want = (n, self.source_channels, *self.image_shape[1:])
        if tuple(source.shape) != want:
            raise ValueError(f"cond['source'] must be [n, C_src, *spatial] = {list(want)}, got {list(source.shape)}")
        return super().sample(n, generator, cond, offset)

    # ---- metrics ---------------------------------------------------------------------------------------------
    def target_intensity(self) -> dict:
        """The data set's target mapping (`target_intensity`, e.g. the HU window) that the metrics invert."""
        datamodule = self.trainer.datamodule
        record = getattr(datamodule, "target_intensity", None) or getattr(datamodule.split("train"),
                                                                          "target_intensity", None)
        if not record:
            raise ValueError("the data set records no target_intensity (native_min/native_max/unit of the target); "
                             "translation metrics in native units need it")
        return dict(record)

    def log_translation_metrics(self, batch: dict, batch_idx: int) -> dict[str, float]:
        """Translate a val batch (fixed generator per batch) and log MAE/PSNR/SSIM in native units (HU)."""
        source, target = self.pair(batch)
        pred = self.sample(len(source), generator=torch.Generator().manual_seed(batch_idx), cond={"source": source})
        identity = source if source.shape == target.shape else None  # the baseline needs equal channels
        values = translation_metrics(pred, target, identity, self.target_intensity(), self.mask_threshold,
                                     self.mask_dilate)
        self.log_dict(values, batch_size=len(source), sync_dist=True)
        return values

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log_translation_metrics(batch, batch_idx)

    def on_fit_start(self) -> None:
        if not hasattr(self.trainer.datamodule, "target_intensity"):
            log.warning("%s: the datamodule is not paired (synthmed.data.paired_nifti.PairedDataModule), so the "
                        "generation metrics (FID, ...) compare translations with its `image`s, the sources; use "
                        "dataset=phantom2d_pairs or paired_nifti", type(self).__name__)


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
