"""Which way is better for each metric: the Optuna direction of a search and the best cell of a compare table.

Keys come from `synthmed/metrics/names.py` (never retyped). A metric missing from every table has no "better"
(e.g. `train/latent_scale`): searches refuse it as an objective and reports bold nothing in its column.

Some metrics have a *target* rather than a direction: the right MS-SSIM diversity is the real data's own (pure noise
scores ~0, a collapsed generator ~1, and neither is good). They are logged beside their value on real images
(`*_real`, same n, same code) and their distance to it (`*_gap`); reports and searches rank by that distance.
"""

from __future__ import annotations

from synthmed.metrics import names as N

LOWER_IS_BETTER = frozenset({
    N.TRAIN_LOSS, N.TRAIN_LOSS_RECON, N.TRAIN_LOSS_KL, N.VAL_LOSS,
    N.FID, N.FID_AXIAL, N.FID_CORONAL, N.FID_SAGITTAL, N.FID_CI_LOW, N.FID_CI_HIGH, N.KID,
    N.MAE, N.FD_DOMAIN, N.MEMORIZATION_RATE, N.MEMORIZATION_RATE_FEATURE,
    N.MS_SSIM_DIVERSITY_GAP,  # distance of the samples' MS-SSIM diversity to the real data's
    N.COND_AGE_MAE,
    N.MAE_HU,  # translation error in the target's native unit (HU); the identity baseline is a reference, no column
    N.LESION_APPEARED_RATE,  # lesions a translator invents where its input has none
})
HIGHER_IS_BETTER = frozenset({N.PRECISION, N.RECALL, N.DENSITY, N.COVERAGE, N.SSIM, N.PSNR, N.COND_ACCURACY,
                              N.COND_BALANCED_ACCURACY, N.COND_SEX_ACCURACY,
                              N.PSNR_HU, N.SSIM_HU, N.EDGE_SSIM,
                              N.LESION_PRESERVED_RATE})  # lesions of the input a translator keeps
# metric -> (its value on real data, the distance between the two)
TARGETS = {N.MS_SSIM_DIVERSITY: (N.MS_SSIM_DIVERSITY_REAL, N.MS_SSIM_DIVERSITY_GAP)}
REFERENCES = frozenset(real for real, _ in TARGETS.values())  # real-data values: a reference row, not a column


def direction(key: str) -> str | None:
    """`"minimize"`, `"maximize"`, `"target"` (closest to the real data's value) or None (no order: GAN losses,
    spreads, scales) for a metric key."""
    if key in LOWER_IS_BETTER:
        return "minimize"
    if key in HIGHER_IS_BETTER:
        return "maximize"
    if key in TARGETS:
        return "target"
    return None


def objective_key(key: str) -> str:
    """The key a search optimises for `key`: the distance for a target metric, the metric itself otherwise."""
    return TARGETS[key][1] if key in TARGETS else key


def search_direction(key: str) -> str | None:
    """Optuna's direction for `optimized_metric=key` (a target metric: minimize its distance), or None."""
    return direction(objective_key(key))
