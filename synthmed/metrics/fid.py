"""Frechet Inception Distance (Heusel et al. 2017, NeurIPS): statistics, Frechet distance, 2.5D FID for volumes.

The matrix square root is ours: float64, from eigen-decompositions of symmetric matrices, which is stable on the
rank-deficient covariances that small sample counts produce and ~20x faster than ``scipy.linalg.sqrtm`` at 2048
dims. Images are ``[B, C, H, W]``; volumes ``[B, C, H, W, D]`` are scored slice-wise on the three orthogonal planes
(axes taken as MONAI's (x, y, z): sagittal slices fix H, coronal fix W, axial fix D).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from synthmed.metrics import names

PLANE_AXES = {"axial": 4, "coronal": 3, "sagittal": 2}  # axis of [B, C, H, W, D] that a slice of the plane fixes
PLANE_KEYS = {"axial": names.FID_AXIAL, "coronal": names.FID_CORONAL, "sagittal": names.FID_SAGITTAL}
IMAGE_PLANE = "2d"  # the single "plane" of a 2D image set


# --------------------------------------------------------------------------------------------------- Frechet distance
def _as_f64(x) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(torch.float64)


def sqrtm_psd(a: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix ``[D, D]``; round-off negatives clipped to 0."""
    w, v = torch.linalg.eigh(_as_f64(a))
    return (v * w.clamp(min=0).sqrt()) @ v.T


def trace_sqrt_product(sigma1, sigma2) -> float:
    """``Tr(sqrt(S1 S2))`` via the symmetric ``sqrt(S1) S2 sqrt(S1)``, which has the same eigenvalues as ``S1 S2``."""
    root = sqrtm_psd(sigma1)
    m = root @ _as_f64(sigma2) @ root
    eig = torch.linalg.eigvalsh((m + m.T) / 2)  # symmetrize away round-off so eigvalsh sees what it assumes
    return float(eig.clamp(min=0).sqrt().sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))`` in float64; numpy or tensors, ``[D]`` and ``[D, D]``."""
    mu1, mu2, sigma1, sigma2 = (_as_f64(x) for x in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"mu/sigma shapes differ: {tuple(mu1.shape)} vs {tuple(mu2.shape)}")
    diff = mu1 - mu2
    tr = float(torch.trace(sigma1) + torch.trace(sigma2))
    return float(diff @ diff) + tr - 2 * trace_sqrt_product(sigma1, sigma2)


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``[D]`` and covariance ``[D, D]`` (ddof=1, as ``np.cov``) of ``[N, D]`` features, float64."""
    x = _as_f64(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features: expected [N, D] with N >= 2, got {tuple(x.shape)}")
    return x.mean(0), torch.cov(x.T)


def fid_from_features(f1: Tensor, f2: Tensor) -> float:
    """FID between two feature sets ``[N1, D]`` and ``[N2, D]``.

    With few samples the covariances have rank < D, and ``Tr sqrt(S1 S2)`` equals the nuclear norm of the small
    ``[N1, N2]`` matrix ``A B^T`` (centered, scaled features), which is exact and far cheaper than D x D work.
    """
    if not _low_rank_route(f1.shape[0], f2.shape[0], f1.shape[1]):
        return frechet_distance(*feature_stats(f1), *feature_stats(f2))
    a, b = _centered(f1), _centered(f2)
    diff = _as_f64(f1).mean(0) - _as_f64(f2).mean(0)
    tr_sqrt = float(torch.linalg.svdvals(a @ b.T).sum())
    return float(diff @ diff) + float((a * a).sum() + (b * b).sum()) - 2 * tr_sqrt


def _low_rank_route(n1: int, n2: int, d: int) -> bool:
    """True when the SVD of ``[N1, N2]`` costs less than eigen-decompositions of ``[D, D]``."""
    return n1 * n2 * min(n1, n2) < d**3


def _centered(f: Tensor) -> Tensor:
    """``(X - mean) / sqrt(N - 1)`` so that ``A^T A`` is the covariance."""
    x = _as_f64(f)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features: expected [N, D] with N >= 2, got {tuple(x.shape)}")
    return (x - x.mean(0)) / (x.shape[0] - 1) ** 0.5


def check_min_samples(n_fake: int, n_real: int, min_samples: int) -> None:
    """Refuse a FID from fewer samples than configured: its bias depends on N, so it is not comparable."""
    floor = max(min_samples, 2)  # a covariance needs two samples
    for name, n in (("fake", n_fake), ("real", n_real)):
        if n < floor:
            raise ValueError(
                f"FID needs at least min_samples={floor} {name} samples, got {n}; a FID from fewer samples is not "
                "comparable (generate more samples or lower metrics.min_samples)"
            )


# ------------------------------------------------------------------------------------------------ feature extraction
@dataclass
class FeatureSet:
    """Inception features of a sample set, grouped per sample so that resampling stays per image/volume.

    Attributes:
        planes: plane name -> ``[B, S, dims]``; 2D images: ``{"2d": [B, 1, dims]}``, volumes: axial/coronal/sagittal
            with S slices per volume.
    """

    planes: dict[str, Tensor]
    _stats: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        """Number of samples (images or volumes)."""
        return next(iter(self.planes.values())).shape[0]

    @property
    def is_3d(self) -> bool:
        return IMAGE_PLANE not in self.planes

    def flat(self, plane: str) -> Tensor:
        """``[B * S, dims]`` features of every slice of ``plane``."""
        f = self.planes[plane]
        return f.reshape(-1, f.shape[-1])

    def stats(self, plane: str) -> tuple[Tensor, Tensor]:
        """Cached (mu ``[dims]``, sigma ``[dims, dims]``) of ``plane``."""
        if plane not in self._stats:
            self._stats[plane] = feature_stats(self.flat(plane))
        return self._stats[plane]

    def per_sample(self) -> Tensor:
        """One vector per sample ``[B, P * dims]``: slices averaged per plane, planes concatenated (KID, PR, ...)."""
        return torch.cat([f.mean(1) for f in self.planes.values()], dim=1)

    def subset(self, index: Tensor) -> FeatureSet:
        """The samples at ``index`` ``[K]`` (with repeats, for the bootstrap)."""
        return FeatureSet({p: f[index] for p, f in self.planes.items()})

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for the reference cache: features per plane, and their statistics where a distance can use them.

        Below ``dims`` rows a plane's FID always takes the low-rank route (``_low_rank_route``), which reads the
        features, not ``sigma``: storing the ``[dims, dims]`` covariance there would only cost 32 MiB per plane.
        """
        out = {}
        for plane, f in self.planes.items():
            out[f"feat.{plane}"] = f.numpy()
            if self.flat(plane).shape[0] >= f.shape[-1]:
                mu, sigma = self.stats(plane)
                out[f"mu.{plane}"], out[f"sigma.{plane}"] = mu.numpy(), sigma.numpy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureSet:
        """The inverse of ``to_arrays``; statistics that were not stored are computed when first needed."""
        planes = {k[5:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("feat.")}
        stats = {p: (torch.from_numpy(arrays[f"mu.{p}"]), torch.from_numpy(arrays[f"sigma.{p}"]))
                 for p in planes if f"sigma.{p}" in arrays}
        return cls(planes, stats)


def volume_slices(volumes: Tensor, plane: str, max_slices: int | None = None) -> Tensor:
    """Slices of ``[B, C, H, W, D]`` volumes on one plane, as ``[B, S, C, h, w]``.

    Args:
        plane: axial (fixes D), coronal (fixes W) or sagittal (fixes H).
        max_slices: keep at most this many evenly spaced slices per volume (None: all), to bound CPU cost.
    """
    if plane not in PLANE_AXES:
        raise ValueError(f"plane must be one of {tuple(PLANE_AXES)}, got {plane!r}")
    slices = volumes.movedim(PLANE_AXES[plane], 1)  # [B, S, C, h, w]
    if max_slices is not None and max_slices < slices.shape[1]:
        keep = torch.linspace(0, slices.shape[1] - 1, max_slices).round().long().unique()
        slices = slices[:, keep]
    return slices


def extract_features(extractor, images: Tensor, batch_size: int = 50, max_slices: int | None = None,
                     progress: bool = False) -> FeatureSet:
    """Inception features of 2D images ``[B, C, H, W]`` or of the three planes of volumes ``[B, C, H, W, D]``."""
    if images.ndim == 4:
        return FeatureSet({IMAGE_PLANE: extractor.extract(images, batch_size, progress).unsqueeze(1)})
    if images.ndim != 5:
        raise ValueError(f"images: expected [B, C, H, W] or [B, C, H, W, D], got {tuple(images.shape)}")
    planes = {}
    for plane in PLANE_AXES:
        s = volume_slices(images, plane, max_slices)
        feats = extractor.extract(s.flatten(0, 1), batch_size, progress)
        planes[plane] = feats.reshape(s.shape[0], s.shape[1], -1)
    return FeatureSet(planes)


# ------------------------------------------------------------------------------------------------------- FID values
def fid_values(fake: FeatureSet, real: FeatureSet) -> dict[str, float]:
    """``{val/fid: v}`` for images; per plane and ``val/fid`` = their mean for volumes."""
    if fake.planes.keys() != real.planes.keys():
        raise ValueError(f"fake and real differ in dimensionality: planes {list(fake.planes)} vs {list(real.planes)}")
    if not fake.is_3d:
        return {names.FID: _plane_fid(fake, real, IMAGE_PLANE)}
    values = {PLANE_KEYS[p]: _plane_fid(fake, real, p) for p in PLANE_AXES}
    values[names.FID] = float(np.mean(list(values.values())))
    return values


def _plane_fid(fake: FeatureSet, real: FeatureSet, plane: str) -> float:
    f1, f2 = fake.flat(plane), real.flat(plane)
    if _low_rank_route(f1.shape[0], f2.shape[0], f1.shape[1]):
        return fid_from_features(f1, f2)
    return frechet_distance(*fake.stats(plane), *real.stats(plane))  # reuses cached reference statistics


def bootstrap_fid(fake: FeatureSet, real: FeatureSet, n_boot: int, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile confidence interval of ``val/fid`` from resampling both sets' samples with replacement."""
    if n_boot < 2:
        raise ValueError(f"bootstrap must be >= 2 resamples for an interval, got {n_boot}")
    gen = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(n_boot):
        i = torch.randint(fake.n, (fake.n,), generator=gen)
        j = torch.randint(real.n, (real.n,), generator=gen)
        draws.append(fid_values(fake.subset(i), real.subset(j))[names.FID])
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# ------------------------------------------------------------------------------------------------------ .npz statistics
def save_stats(path: str | os.PathLike, mu, sigma, provenance: dict[str, str] | None = None) -> None:
    """Write ``mu``/``sigma`` like ``python -m pytorch_fid --save-stats`` (+ a JSON provenance string it ignores)."""
    extra = {"provenance": np.array(json.dumps(provenance or {}, sort_keys=True))}
    np.savez_compressed(path, mu=_as_f64(mu).numpy(), sigma=_as_f64(sigma).numpy(), **extra)


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Read a pytorch-fid or synthmed ``.npz``: (mu ``[D]``, sigma ``[D, D]``, provenance or {})."""
    with np.load(Path(path), allow_pickle=False) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"path: {path} is not a FID statistics file (needs arrays 'mu' and 'sigma')")
        prov = json.loads(str(f["provenance"])) if "provenance" in f else {}
        return f["mu"][:], f["sigma"][:], prov
