"""Which way is better for each metric: the Optuna direction of a search and the best cell of a compare table.

Keys come from `synthmed/metrics/names.py` (never retyped). A metric missing from both tables has no "better"
(e.g. `train/latent_scale`): searches refuse it as an objective and reports bold nothing in its column.
"""

from __future__ import annotations

from synthmed.metrics import names as N

LOWER_IS_BETTER = frozenset({
    N.TRAIN_LOSS, N.TRAIN_LOSS_RECON, N.TRAIN_LOSS_KL, N.VAL_LOSS,
    N.FID, N.FID_AXIAL, N.FID_CORONAL, N.FID_SAGITTAL, N.FID_CI_LOW, N.FID_CI_HIGH, N.KID,
    N.MAE, N.FD_DOMAIN, N.MEMORIZATION_RATE, N.MEMORIZATION_RATE_FEATURE,
    N.MS_SSIM_DIVERSITY,  # mean MS-SSIM between samples: lower = more diverse (less mode collapse)
    N.COND_AGE_MAE,
})
HIGHER_IS_BETTER = frozenset({N.PRECISION, N.RECALL, N.DENSITY, N.COVERAGE, N.SSIM, N.PSNR, N.COND_ACCURACY,
                              N.COND_BALANCED_ACCURACY, N.COND_SEX_ACCURACY})


def direction(key: str) -> str | None:
    """`"minimize"`, `"maximize"` or None (no order: GAN losses, spreads, scales) for a metric key."""
    if key in LOWER_IS_BETTER:
        return "minimize"
    if key in HIGHER_IS_BETTER:
        return "maximize"
    return None
