"""The translator contract: a GenerativeModule that maps a source image (MR) to a target image (CT).

`sample(n, generator, cond={"source": x})` translates `x` `[n, C_src, *spatial]` into `[n, *image_shape]` in
[-1, 1]; training batches carry `image` (the source) and `target`. `validation_step` scores the translations
against the real targets in the target's native unit (HU for CT; synthmed/metrics/translation.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from synthmed.metrics.translation import translation_metrics
from synthmed.models.base import GenerativeModule, OptimizerFactory

log = logging.getLogger(__name__)


class Translator(GenerativeModule):
    """Base of the translators (pix2pix, cond_ddpm): source handling and translation metrics.

    `sample()` needs the source images: callers that score or draw translations (the callbacks, the final
    evaluation, `synthmed evaluate`) pass a split's sources (`synthmed.evaluation.step.source_request`).

    Args:
        source_channels: channels of the source images (None: as many as the target's, `image_shape[0]`).
        mask_threshold: body mask threshold in the target's native unit (None: -500 HU for CT; see
            `synthmed.metrics.translation.body_mask`).
        mask_dilate: voxels of body mask dilation.
        name, image_shape, optimizer, ema_decay, sample_batch_size, grad_clip_norm: see GenerativeModule.
    """

    requires_source = True  # sample() translates cond["source"]
    directions: tuple[str, ...] = ("a2b",)  # a2b: source -> target; unpaired translators (CycleGAN) also b2a
    direction: str = "a2b"  # what sample() translates; set_direction() changes it
    learns_unpaired: bool = False  # True: trains on unpaired items (CycleGAN); False: needs registered pairs

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

    def set_direction(self, direction: str) -> None:
        """Translate `a2b` (source -> target, as trained) or, for translators that learn both ways, `b2a`."""
        if direction not in self.directions:
            raise ValueError(f"direction must be one of {self.directions} for {type(self).__name__}, got "
                             f"{direction!r}")
        self.direction = direction

    def input_channels(self) -> int:
        """Channels of what sample() translates in the current direction."""
        return self.source_channels if self.direction == "a2b" else self.image_shape[0]

    # ---- the source ------------------------------------------------------------------------------------------
    @staticmethod
    def pair(batch: dict) -> tuple[Tensor, Tensor]:
        """(source, target) of a training batch; a clear error for data sets without paired targets."""
        if "target" not in batch:
            raise KeyError("translators train on paired items: this data set's items have no 'target' (use "
                           "dataset=phantom2d_pairs, phantom2d/3d or paired_nifti)")
        return batch["image"], batch["target"]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, cond: dict | None = None,
               offset: int = 0) -> Tensor:
        """Translate `cond["source"]` `[n, C_src, *spatial]` into `[n, *image_shape]` (see GenerativeModule.sample)."""
        source = (cond or {}).get("source")
        if source is None:
            raise ValueError(f"{type(self).__name__}.sample() translates images: pass cond={{'source': x}} with x "
                             f"[n, {self.source_channels}, *spatial] (for a split's sources: "
                             "synthmed.evaluation.step.source_request)")
        want = (n, self.input_channels(), *self.image_shape[1:])
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

    def has_paired_truth(self, split: str) -> bool:
        """False when the data set says its `split` pairs are not the same subjects (`paired_truth`, e.g.
        dataset=unpaired): HU metrics against such a `target` would be meaningless. Paired data sets say nothing."""
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "split"):  # loaders passed directly: nothing to ask
            return True
        return bool(getattr(datamodule.split(split), "paired_truth", True))

    def log_translation_metrics(self, batch: dict, batch_idx: int, pred: Tensor | None = None) -> dict[str, float]:
        """Translate a val batch (fixed generator per batch; or take its translation `pred`) and log MAE/PSNR/SSIM
        in native units (HU)."""
        source, target = self.pair(batch)
        if pred is None:
            pred = self.sample(len(source), generator=torch.Generator().manual_seed(batch_idx),
                               cond={"source": source})
        identity = source if source.shape == target.shape else None  # the baseline needs equal channels
        values = translation_metrics(pred, target, identity, self.target_intensity(), self.mask_threshold,
                                     self.mask_dilate)
        self.log_val_means(values, len(source))
        return values

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log_translation_metrics(batch, batch_idx)

    def on_fit_start(self) -> None:
        if not self.learns_unpaired and not self.has_paired_truth("train"):
            raise ValueError(f"{type(self).__name__} learns from registered pairs, but this data set's training "
                             "targets are other subjects' images (paired_truth=False: dataset=phantom2d_unpaired or "
                             "unpaired); use model=cyclegan, or a paired data set (phantom2d_pairs, paired_nifti)")
        if not hasattr(self.trainer.datamodule, "target_intensity"):
            log.warning("%s: the datamodule is not paired (synthmed.data.paired_nifti.PairedDataModule), so the "
                        "generation metrics (FID, ...) compare translations with its `image`s, the sources; use "
                        "dataset=phantom2d_pairs or paired_nifti", type(self).__name__)
