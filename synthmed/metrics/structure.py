"""Structure preservation between a translation's input and its output (unpaired translation, CycleGAN family).

MR and CT disagree on intensities but share edges: where the input has a tissue boundary the output should have one,
and nowhere else. Both statistics here compare *gradient magnitudes*, so a contrast inversion (a lesion bright on MR
and dark on CT, a skull dark on T1 and bright on CT) still counts as the same edge.

- `gradient_correlation`: normalized cross-correlation of the gradient-magnitude maps, the differentiable term of the
  gradient-consistency loss of Hiasa et al. (SASHIMI 2018, https://arxiv.org/abs/1803.06629), here on magnitudes.
- `edge_ssim`: SSIM of the gradient-magnitude maps (`val/edge_ssim`), the structure metric logged at validation.

Images are `[B, C, H, W]` or `[B, C, H, W, D]` in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

from synthmed.metrics.reconstruction import ssim

_EPS = 1e-6


def gradient_magnitude(x: Tensor) -> Tensor:
    """Central-difference gradient magnitude `[B, C, *spatial]` (replicate padding: no edge at the border)."""
    parts = []
    for axis in range(2, x.ndim):
        pad = torch.cat([x.narrow(axis, 0, 1), x, x.narrow(axis, x.shape[axis] - 1, 1)], dim=axis)
        n = x.shape[axis]
        parts.append((pad.narrow(axis, 2, n) - pad.narrow(axis, 0, n)) * 0.5)
    return torch.sqrt(sum(p.pow(2) for p in parts) + _EPS)


def gradient_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample NCC `[B]` in [-1, 1] of the gradient magnitudes of `a` and `b` (channels averaged first, so a
    1-channel MR and a 1-channel CT, or any channel counts, compare)."""
    ga, gb = (gradient_magnitude(x).mean(1).flatten(1) for x in (a, b))
    ga, gb = ga - ga.mean(1, keepdim=True), gb - gb.mean(1, keepdim=True)
    return (ga * gb).sum(1) / (ga.norm(dim=1) * gb.norm(dim=1) + _EPS)


def edge_ssim(source: Tensor, output: Tensor) -> Tensor:
    """Per-sample SSIM `[B]` of the gradient-magnitude maps of input and output (channel-averaged), each map scaled
    by its own maximum so that a global contrast change between the domains does not count as lost structure."""
    maps = []
    for x in (source, output):
        g = gradient_magnitude(x.float()).mean(1, keepdim=True)
        maps.append(g / g.flatten(1).amax(1).clamp_min(_EPS).view(-1, *(1,) * (g.ndim - 1)))
    return ssim(maps[1], maps[0], data_range=1.0)
