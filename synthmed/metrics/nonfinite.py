"""Samples with NaN/Inf get NaN metrics, never numbers: a diverged generator's memorization rate of 0.0 would read as
"safe" and its diversity as a value. Used by `MetricSuite.__call__` before any metric runs."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from synthmed.metrics import names

# The values each suite metric reports (metrics/suite.py METRICS), all set to NaN for non-finite samples.
KEYS = {"fid": (names.FID,), "kid": (names.KID, names.KID_STD), "precision_recall": (names.PRECISION, names.RECALL),
        "density_coverage": (names.DENSITY, names.COVERAGE), "ms_ssim_diversity": (names.MS_SSIM_DIVERSITY, names.MS_SSIM_DIVERSITY_GAP),
        "memorization": (names.MEMORIZATION_RATE, names.MEMORIZATION_RATE_FEATURE), "fd_domain": (names.FD_DOMAIN,),
        "cond_accuracy": (names.COND_ACCURACY, names.COND_BALANCED_ACCURACY)}


def count_nonfinite(fake: Tensor) -> int:
    """Samples (rows of `[B, C, *spatial]`) holding at least one NaN or Inf."""
    return int((~torch.isfinite(fake.reshape(len(fake), -1))).any(dim=1).sum())


def nan_values(metrics) -> dict[str, float]:
    """NaN for every value the named suite metrics report."""
    return {key: math.nan for m in metrics for key in KEYS.get(m, ())}


def nonfinite_tag(bad: int, n: int) -> str:
    return f"{bad} of {n} samples hold NaN/Inf (a diverged model): every metric is NaN, none was computed"
