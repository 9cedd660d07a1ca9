"""Paired metrics against a ground truth (reconstruction, translation): SSIM, PSNR, MAE, optionally in a mask.

Per-sample values averaged over the batch, 2D ``[B, C, H, W]`` or 3D ``[B, C, H, W, D]``. SSIM (Wang et al. 2004)
uses torchmetrics' SSIM map (Gaussian 11, sigma 1.5) averaged away from the border where the window would read
padding, as scikit-image does, so values agree with ``skimage.metrics.structural_similarity``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from synthmed.metrics import names

SSIM_KERNEL, SSIM_SIGMA = 11, 1.5


def _check(pred: Tensor, target: Tensor, mask: Tensor | None, data_range: float) -> None:
    if pred.shape != target.shape or pred.ndim not in (4, 5):
        raise ValueError(f"pred/target: expected equal [B, C, H, W(, D)] shapes, got {tuple(pred.shape)}, "
                         f"{tuple(target.shape)}")
    if mask is not None and mask.shape != pred.shape:
        raise ValueError(f"mask: expected shape {tuple(pred.shape)}, got {tuple(mask.shape)}")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    if min(pred.shape[2:]) < SSIM_KERNEL:
        raise ValueError(f"pred/target: every spatial side must be >= {SSIM_KERNEL} (the SSIM window), "
                         f"got {tuple(pred.shape[2:])}")


def ssim(pred: Tensor, target: Tensor, data_range: float = 2.0, mask: Tensor | None = None) -> Tensor:
    """Per-sample SSIM ``[B]``.

    Args:
        pred, target: ``[B, C, H, W]`` or ``[B, C, H, W, D]``, each side >= 11.
        data_range: max - min of the intensity mapping (2.0 for [-1, 1]; e.g. the HU window width in HU).
        mask: bool like ``pred``; average only where True (after the border crop).
    """
    _check(pred, target, mask, data_range)
    _, full = structural_similarity_index_measure(pred.float(), target.float(), sigma=SSIM_SIGMA,
                                                  kernel_size=SSIM_KERNEL, data_range=data_range,
                                                  reduction="none", return_full_image=True)
    crop = (slice(None), slice(None)) + (slice(SSIM_KERNEL // 2, -(SSIM_KERNEL // 2)),) * (pred.ndim - 2)
    weight = torch.ones_like(full) if mask is None else mask.to(full.dtype)
    return _masked_mean(full[crop], weight[crop])


def psnr(pred: Tensor, target: Tensor, data_range: float = 2.0, mask: Tensor | None = None) -> Tensor:
    """Per-sample PSNR ``[B]`` in dB, ``10 log10(data_range^2 / MSE)``; MSE over the mask when given."""
    _check(pred, target, mask, data_range)
    if mask is None:
        dims = tuple(range(1, pred.ndim))
        return peak_signal_noise_ratio(pred.float(), target.float(), data_range=data_range, reduction="none", dim=dims)
    return torch.stack([peak_signal_noise_ratio(p[m].float(), t[m].float(), data_range=data_range)
                        for p, t, m in zip(pred, target, mask.bool())])


def mae(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample mean absolute error ``[B]`` in image units (multiply by the mapping's scale for HU)."""
    _check(pred, target, mask, 1.0)
    err = (pred.float() - target.float()).abs()
    return _masked_mean(err, torch.ones_like(err) if mask is None else mask.to(err.dtype))


def _masked_mean(x: Tensor, weight: Tensor) -> Tensor:
    """Per-sample weighted mean ``[B]``; an empty mask gives NaN rather than a silent 0."""
    flat_w = weight.flatten(1)
    return (x.flatten(1) * flat_w).sum(1) / flat_w.sum(1)


def reconstruction_metrics(pred: Tensor, target: Tensor, data_range: float = 2.0,
                           mask: Tensor | None = None) -> dict[str, float]:
    """``{val/ssim, val/psnr, val/mae}`` averaged over the batch."""
    return {
        names.SSIM: float(ssim(pred, target, data_range, mask).mean()),
        names.PSNR: float(psnr(pred, target, data_range, mask).mean()),
        names.MAE: float(mae(pred, target, mask).mean()),
    }
