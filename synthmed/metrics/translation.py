"""Translation metrics in physical units: MAE, PSNR and SSIM of a translated image against the real target, inside a
body mask, after inverting the target's intensity mapping (HU for CT), as the SynthRAD2023 challenge scores
synthetic CT (Huijben et al. 2024, the challenge report).

Images arrive in synthmed's [-1, 1] units, `[B, C, H, W]` or `[B, C, H, W, D]`. The body mask comes from the real
target (voxels above an air threshold, dilated by a few voxels so the skin edge counts) and is the same for every
prediction of one target, so numbers of different models and of the identity baseline are comparable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from synthmed.metrics import names
from synthmed.metrics.reconstruction import mae, psnr, ssim

AIR_HU = -500.0  # HU; above it is body (fat is about -100 HU, air -1000): SynthRAD-style body masks
FOREGROUND_UNITS = -0.9  # [-1, 1] units; non-HU targets: above it is foreground (as synthmed.data.volume)


def to_native(x: Tensor, intensity: dict) -> Tensor:
    """[-1, 1] -> the mapping's native units (HU for a CT window), in float32: the inverse of the data mapping."""
    lo, hi = float(intensity["native_min"]), float(intensity["native_max"])
    return lo + (x.float().clamp(-1.0, 1.0) + 1.0) * 0.5 * (hi - lo)


def body_mask(target_native: Tensor, intensity: dict, threshold: float | None = None, dilate: int = 2) -> Tensor:
    """Bool mask `[B, C, *spatial]` of the body: target above `threshold` (native units), dilated by `dilate` voxels.

    Args:
        target_native: the real target in native units.
        intensity: the target's intensity record; its `unit` picks the default threshold.
        threshold: native value separating body from background; None = -500 HU for HU targets, else the native
            value of -0.9 in [-1, 1] units (5 % of the range above its minimum).
        dilate: voxels of dilation (a max filter of side 2 * dilate + 1); 0 = none.
    """
    if dilate < 0:
        raise ValueError(f"dilate must be >= 0, got {dilate}")
    if threshold is None:
        threshold = AIR_HU if intensity.get("unit") == "HU" else float(to_native(torch.tensor(FOREGROUND_UNITS),
                                                                                 intensity))
    mask = (target_native > threshold).float()
    if dilate:
        pool = F.max_pool2d if mask.ndim == 4 else F.max_pool3d
        mask = pool(mask, kernel_size=2 * dilate + 1, stride=1, padding=dilate)
    return mask.bool()


def translation_metrics(pred: Tensor, target: Tensor, source: Tensor | None, target_intensity: dict,
                        threshold: float | None = None, dilate: int = 2) -> dict[str, float]:
    """Batch means of MAE, PSNR and SSIM in the target's native unit inside the body mask.

    Args:
        pred: translated images `[B, C, *spatial]` in [-1, 1].
        target: the real targets, same shape, in [-1, 1].
        source: the source images (same shape) or None; when given, `val/mae_hu_identity` scores the identity
            mapping (the source read through the target's mapping), the baseline a translator must beat.
        target_intensity: the target's intensity record (`native_min`, `native_max`, `unit`), e.g. the HU window.
        threshold, dilate: body mask settings (see `body_mask`).

    Returns:
        `{val/mae_hu, val/psnr_hu, val/ssim_hu[, val/mae_hu_identity]}`: MAE in native units (HU), PSNR in dB with
        the window width as data range, SSIM with the same data range.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred/target: expected equal shapes, got {tuple(pred.shape)}, {tuple(target.shape)}")
    data_range = float(target_intensity["native_max"]) - float(target_intensity["native_min"])
    real = to_native(target, target_intensity)
    mask = body_mask(real, target_intensity, threshold, dilate)
    fake = to_native(pred, target_intensity)
    out = {names.MAE_HU: float(mae(fake, real, mask).mean()),
           names.PSNR_HU: float(psnr(fake, real, data_range, mask).mean()),
           names.SSIM_HU: float(ssim(fake, real, data_range, mask).mean())}
    if source is not None:
        if source.shape != target.shape:
            raise ValueError(f"source: expected shape {tuple(target.shape)}, got {tuple(source.shape)} (the identity "
                             "baseline needs source and target with equal channels)")
        out[names.MAE_HU_IDENTITY] = float(mae(to_native(source, target_intensity), real, mask).mean())
    return out
