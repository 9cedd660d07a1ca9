"""Sample-level metrics on feature matrices ``[N, D]``: KID, precision/recall, density/coverage.

All take real and fake features from the same extractor (see ``fid.FeatureSet.per_sample``). Distances are
computed in row blocks so memory stays O(block * N), not O(N^2) at once.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.image.kid import poly_mmd

_BLOCK = 1024  # rows of a distance block: 1024 x 50k float32 = 200 MB at most


def _check_features(real: Tensor, fake: Tensor, min_n: int = 2) -> None:
    for name, f in (("real", real), ("fake", fake)):
        if f.ndim != 2 or f.shape[0] < min_n:
            raise ValueError(f"{name}: expected features [N, D] with N >= {min_n}, got {tuple(f.shape)}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake feature dims differ: {real.shape[1]} vs {fake.shape[1]}")


def kid(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, ICLR): unbiased MMD^2 with ``(x.y / D + 1)^3``.

    torchmetrics' ``poly_mmd`` does the math; subsets are drawn here with a seeded generator (torchmetrics' own
    class draws unseeded) and their size is clipped to the smaller set so small validation sets still work.

    Args:
        real: ``[N, D]`` reference features.
        fake: ``[M, D]`` generated features.
        subsets: number of random subsets averaged.
        subset_size: samples per subset, clipped to min(N, M).
        degree: polynomial kernel degree (3 in the paper).
        seed: subset sampling seed.

    Returns:
        (mean, std over subsets); std with ddof=0 as torchmetrics.
    """
    _check_features(real, fake)
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"subset_size must be >= 2 after clipping to the sample counts, got {size}")
    gen = torch.Generator().manual_seed(seed)
    real, fake = real.double(), fake.double()  # degree-3 kernels of 2048-d features lose digits in float32
    scores = []
    for _ in range(subsets):
        i = torch.randperm(real.shape[0], generator=gen)[:size]
        j = torch.randperm(fake.shape[0], generator=gen)[:size]
        scores.append(poly_mmd(real[i], fake[j], degree=degree))
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))


def kth_neighbour_radii(x: Tensor, k: int) -> Tensor:
    """Distance ``[N]`` from each row of ``x`` ``[N, D]`` to its k-th nearest other row."""
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in [1, N - 1] = [1, {x.shape[0] - 1}], got {k}")
    radii = [torch.cdist(block, x).kthvalue(k + 1, dim=1).values for block in x.split(_BLOCK)]  # +1: self at 0
    return torch.cat(radii)


def _inside_counts(points: Tensor, centres: Tensor, radii: Tensor, strict: bool) -> Tensor:
    """For each of ``points`` ``[M, D]``: in how many balls ``(centres [N, D], radii [N])`` it lies."""
    counts = []
    for block in points.split(_BLOCK):
        d = torch.cdist(block, centres)
        inside = d < radii if strict else d <= radii
        counts.append(inside.sum(1))
    return torch.cat(counts)


def _ball_hit(centres: Tensor, radii: Tensor, points: Tensor) -> Tensor:
    """``[N]`` bool: whether any of ``points`` lies strictly inside each ball (for coverage)."""
    hit = [torch.cdist(block, points).min(1).values < r for block, r in zip(centres.split(_BLOCK), radii.split(_BLOCK))]
    return torch.cat(hit)


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, NeurIPS) with k-NN manifolds.

    Precision: share of fake samples inside the real manifold (union of balls reaching each real sample's k-th
    nearest real neighbour); recall: share of real samples inside the fake manifold. Ball membership uses <=,
    as the paper's code.

    Args:
        real: ``[N, D]``; fake: ``[M, D]``; k: neighbourhood size (3 in the paper).
    """
    _check_features(real, fake, min_n=k + 1)
    real, fake = real.float(), fake.float()
    precision = (_inside_counts(fake, real, kth_neighbour_radii(real, k), strict=False) > 0).float().mean()
    recall = (_inside_counts(real, fake, kth_neighbour_radii(fake, k), strict=False) > 0).float().mean()
    return float(precision), float(recall)


def density_coverage(real: Tensor, fake: Tensor, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, ICML), as their reference code ``prdc`` (strict <).

    Density: mean over fake samples of how many real k-NN balls contain it, divided by k (1 ~ matches the real
    density, can exceed 1). Coverage: share of real balls that contain at least one fake sample.

    Args:
        real: ``[N, D]``; fake: ``[M, D]``; k: neighbourhood size (5 in the paper).
    """
    _check_features(real, fake, min_n=k + 1)
    real, fake = real.float(), fake.float()
    radii = kth_neighbour_radii(real, k)
    density = _inside_counts(fake, real, radii, strict=True).float().mean() / k
    coverage = _ball_hit(real, radii, fake).float().mean()
    return float(density), float(coverage)
