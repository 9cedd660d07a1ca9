"""Sample diversity: mean MS-SSIM between random pairs of distinct samples (Odena et al. 2017, ICML).

High values (-> 1) mean samples look alike (mode collapse); real data gives the baseline. MS-SSIM (Wang et al.
2003) needs the image at its coarsest scale to exceed the window, so the kernel size and the number of scales
are chosen from the image size by one recorded rule (``ms_ssim_config``), and the call reports what it used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

STANDARD_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest to coarsest
STANDARD_KERNEL, STANDARD_SIGMA = 11, 1.5


@dataclass(frozen=True)
class MSSSIMConfig:
    """What an MS-SSIM value was computed with; ``str()`` is the provenance tag."""

    kernel_size: int
    sigma: float
    betas: tuple[float, ...]

    def __str__(self) -> str:
        return f"kernel={self.kernel_size} sigma={self.sigma:.4g} scales={len(self.betas)} betas={self.betas}"


def ms_ssim_config(spatial_shape: tuple[int, ...]) -> MSSSIMConfig:
    """The standard setting (11x11 Gaussian, sigma 1.5, 5 scales) reduced until it fits the image.

    Rule: kernel = 11, or the largest odd size <= the smallest side for tiny images, with sigma = 1.5 * kernel / 11
    (so torchmetrics' Gaussian has exactly that size); then as many scales (<= 5) as keep the coarsest scale at
    least the kernel size and pass torchmetrics' own checks; betas are the standard ones for those scales,
    renormalized to sum 1 so the value stays a weighted geometric mean.

    Args:
        spatial_shape: ``(H, W)`` or ``(H, W, D)``.
    """
    side = min(spatial_shape)
    if side < 3:
        raise ValueError(f"spatial_shape: MS-SSIM needs every side >= 3, got {tuple(spatial_shape)}")
    kernel = STANDARD_KERNEL if side >= STANDARD_KERNEL else side - (1 - side % 2)
    scales = max(s for s in range(1, len(STANDARD_BETAS) + 1) if _fits(side, kernel, s))
    betas = STANDARD_BETAS[:scales]
    total = sum(betas)
    return MSSSIMConfig(kernel, STANDARD_SIGMA * kernel / STANDARD_KERNEL, tuple(round(b / total, 6) for b in betas))


def _fits(side: int, kernel: int, scales: int) -> bool:
    coarsest_ok = side // 2 ** (scales - 1) >= kernel
    torchmetrics_ok = side >= 2**scales and side // max(1, scales - 1) ** 2 > kernel - 1  # its checks, verbatim
    return coarsest_ok and torchmetrics_ok


def ms_ssim_pairs(a: Tensor, b: Tensor, data_range: float = 2.0, config: MSSSIMConfig | None = None) -> Tensor:
    """Per-pair MS-SSIM ``[B]`` of ``a`` and ``b``, each ``[B, C, H, W]`` or ``[B, C, H, W, D]``."""
    cfg = config or ms_ssim_config(tuple(a.shape[2:]))
    return ms_ssim(a.float(), b.float(), gaussian_kernel=True, sigma=cfg.sigma, kernel_size=cfg.kernel_size,
                   reduction="none", data_range=data_range, betas=cfg.betas, normalize="relu")


_VOXELS_PER_CALL = 1 << 22  # voxels per torchmetrics call: bounds its ~12 float temporaries per voxel to ~200 MB


def ms_ssim_diversity(samples: Tensor, n_pairs: int = 100, data_range: float = 2.0,
                      seed: int = 0) -> tuple[float, MSSSIMConfig]:
    """Mean MS-SSIM over seeded random pairs of distinct samples.

    Args:
        samples: ``[B, C, H, W]`` or ``[B, C, H, W, D]``, B >= 2, in a range of width ``data_range``.
        n_pairs: pairs drawn (with replacement across pairs, never a sample with itself).
        data_range: max - min of the intensity range (2.0 for synthmed's [-1, 1]).
        seed: pair sampling seed.

    Returns:
        (mean MS-SSIM, the configuration used).
    """
    if samples.ndim not in (4, 5) or samples.shape[0] < 2:
        raise ValueError(f"samples: expected [B, C, H, W(, D)] with B >= 2, got {tuple(samples.shape)}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    cfg = ms_ssim_config(tuple(samples.shape[2:]))
    i, j = _distinct_pairs(samples.shape[0], n_pairs, seed)
    batch_size = max(1, _VOXELS_PER_CALL // samples[0].numel())  # volumes: few pairs per call, bounded memory
    values = [ms_ssim_pairs(samples[bi], samples[bj], data_range, cfg)
              for bi, bj in zip(i.split(batch_size), j.split(batch_size))]
    return float(torch.cat(values).mean()), cfg


def _distinct_pairs(n: int, n_pairs: int, seed: int) -> tuple[Tensor, Tensor]:
    """Index pairs ``[n_pairs]`` x 2 with i != j: j = i + offset mod n, offset uniform in 1..n-1."""
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(n, (n_pairs,), generator=gen)
    j = (i + torch.randint(1, n, (n_pairs,), generator=gen)) % n
    return i, j
