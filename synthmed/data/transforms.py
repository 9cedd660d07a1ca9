"""MONAI transform chains shared by the file formats: volume preprocessing, the native <-> [-1, 1] intensity
mapping (and its inverse for exports), and seeded train-time augmentation.

Intensity records (the `intensity` attribute of every dataset) are plain dicts:
- `{"kind": "window", "native_min": -1000, "native_max": 1000, "unit": "HU"}`: CT, a fixed HU window, exact inverse;
- `{"kind": "percentile", "lower": 0.5, "upper": 99.5, "native_min": m, "native_max": M, "unit": "a.u."}`: MR,
  scaled per volume, so `m`/`M` are the dataset medians of the per-volume percentiles (an approximate inverse);
- `{"kind": "linear", "native_min": 0, "native_max": 255 | 65535, "bits": 8 | 16}`: PNG/JPEG/TIFF/MedMNIST.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureType,
    Orientation,
    RandAffine,
    RandFlip,
    RandGaussianNoise,
    RandScaleIntensity,
    RandShiftIntensity,
    RandZoom,
    ResizeWithPadOrCrop,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
    Spacing,
    Transform,
)
from torch.utils.data import get_worker_info

INTENSITY_MODES = ("ct", "mr")
AUGMENT_KEYS = ("prob", "flip_axes", "rotate_deg", "scale", "noise_std", "intensity_shift", "intensity_scale")


def check_intensity_config(cfg: dict | None) -> dict:
    """Validates `intensity: {mode: ct|mr, window: [lo, hi] HU, percentiles: [lo, hi]}`; fills defaults."""
    cfg = {"mode": "mr", "window": [-1000.0, 1000.0], "percentiles": [0.5, 99.5], **(cfg or {})}
    if cfg["mode"] not in INTENSITY_MODES:
        raise ValueError(f"intensity.mode must be one of {INTENSITY_MODES}, got {cfg['mode']!r}")
    lo, hi = (float(v) for v in cfg["window"])
    if not lo < hi:
        raise ValueError(f"intensity.window must be [low, high] HU with low < high, got {cfg['window']}")
    p_lo, p_hi = (float(v) for v in cfg["percentiles"])
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"intensity.percentiles must be [low, high] with 0 <= low < high <= 100, "
                         f"got {cfg['percentiles']}")
    return {"mode": cfg["mode"], "window": [lo, hi], "percentiles": [p_lo, p_hi]}


def scale_intensity(cfg: dict):
    """The MONAI transform mapping native values to [-1, 1] (clipped: values outside the window saturate)."""
    if cfg["mode"] == "ct":
        return ScaleIntensityRange(*cfg["window"], b_min=-1.0, b_max=1.0, clip=True)
    return ScaleIntensityRangePercentiles(*cfg["percentiles"], b_min=-1.0, b_max=1.0, clip=True)


def intensity_record(cfg: dict, volume_stats: list[dict]) -> dict:
    """The `intensity` attribute for a volume dataset; `volume_stats` holds each volume's `p_lo`/`p_hi`."""
    if cfg["mode"] == "ct":
        return {"kind": "window", "native_min": cfg["window"][0], "native_max": cfg["window"][1], "unit": "HU"}
    lo = float(np.median([s["p_lo"] for s in volume_stats])) if volume_stats else 0.0
    hi = float(np.median([s["p_hi"] for s in volume_stats])) if volume_stats else 1.0
    return {"kind": "percentile", "lower": cfg["percentiles"][0], "upper": cfg["percentiles"][1],
            "native_min": lo, "native_max": hi, "unit": "a.u."}


def unit_to_native(x: np.ndarray, intensity: dict) -> np.ndarray:
    """Inverts the dataset mapping: [-1, 1] -> native units (HU for CT), as float64."""
    lo, hi = float(intensity["native_min"]), float(intensity["native_max"])
    return lo + (np.clip(np.asarray(x, np.float64), -1.0, 1.0) + 1.0) * 0.5 * (hi - lo)


class SelectVolume(Transform):
    """Keeps volume `index` of a 4D image loaded channel-first `[T, H, W, D]` -> `[1, H, W, D]`."""

    def __init__(self, index: int | None) -> None:
        self.index = index

    def __call__(self, img):
        if img.shape[0] == 1:
            return img
        return img[self.index: self.index + 1]


class CheckFinite(Transform):
    """Last guard of a deterministic chain: a NaN here is a defect, never something to train on."""

    def __call__(self, img):
        if not torch.isfinite(torch.as_tensor(img)).all():
            raise ValueError("non-finite values after preprocessing")
        return img


def volume_pipeline(load, spacing, size, intensity_cfg: dict, volume_index: int | None) -> list:
    """Deterministic volume chain: load -> 1 volume -> RAS -> spacing -> [-1, 1] -> crop/pad.

    Intensity is mapped before crop/pad so the padding value -1 is background in every mode.

    Args:
        load: callable `{"source": ...} -> MetaTensor [T, H, W, D]` (channel-first, with an affine).
        spacing: target voxel size in mm (3 floats) or None to keep the native spacing.
        size: spatial size after crop/pad; -1 keeps an axis (the slice axis in 2D mode).
        intensity_cfg: from `check_intensity_config`.
        volume_index: volume kept from a 4D image (3D images ignore it).

    Returns:
        Transforms (flat, so Cache/PersistentDataset cache all of them) whose output is a MetaTensor
        `[1, H, W, D]` in [-1, 1] carrying the preprocessed affine.
    """
    chain = [load, SelectVolume(volume_index or 0), Orientation(axcodes="RAS", labels=None)]
    if spacing is not None:
        chain.append(Spacing(pixdim=[float(s) for s in spacing], mode="bilinear", padding_mode="border"))
    chain += [scale_intensity(intensity_cfg), ResizeWithPadOrCrop([int(s) for s in size], value=-1.0),
              CheckFinite()]
    return chain


def plain(x) -> torch.Tensor:
    """MetaTensor (what MONAI array transforms return) -> torch.Tensor; anything else through torch.as_tensor."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def to_plain_tensor():
    """MetaTensor -> float32 torch.Tensor: items carry no header meta (and cache/collate smaller)."""
    return EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False)


class Augment:
    """Seeded train-time augmentation on `[C, *spatial]` tensors in [-1, 1], clamped back to [-1, 1].

    Reseeded once per DataLoader worker from `seed + worker_info.seed` (torch derives that from the global seed), so
    workers differ from each other and a run is reproducible for a fixed seed and worker count.
    """

    def __init__(self, transform: Compose, seed: int) -> None:
        self.transform, self.seed = transform, int(seed)
        self._seeded_for: int | None = None
        self.transform.set_random_state(seed=self.seed % 2**32)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        info = get_worker_info()
        if info is not None and info.seed != self._seeded_for:
            self._seeded_for = info.seed
            self.transform.set_random_state(seed=(self.seed + info.seed) % 2**32)
        return plain(self.transform(image)).clamp_(-1.0, 1.0)


def build_augment(spatial_dims: int, cfg: dict | None, seed: int) -> Augment | None:
    """MONAI random transforms from the `augment` config; None when every setting is off.

    Keys (all optional): prob (per transform), flip_axes (spatial axes), rotate_deg, scale (relative zoom range),
    noise_std, intensity_shift, intensity_scale (the last three in [-1, 1] units).
    """
    cfg = dict(cfg or {})
    unknown = set(cfg) - set(AUGMENT_KEYS)
    if unknown:
        raise ValueError(f"augment has unknown key(s) {sorted(unknown)}; expected a subset of {AUGMENT_KEYS}")
    prob = float(cfg.get("prob", 0.5))
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"augment.prob must be in [0, 1], got {prob}")
    chain = [RandFlip(prob=prob, spatial_axis=_axis(a, spatial_dims)) for a in cfg.get("flip_axes") or []]
    rot, scale = math.radians(float(cfg.get("rotate_deg", 0.0))), float(cfg.get("scale", 0.0))
    if rot:
        chain.append(RandAffine(prob=prob, rotate_range=rot if spatial_dims == 2 else (rot, rot, rot),
                                padding_mode="border", mode="bilinear"))
    if scale:  # RandZoom with float bounds zooms isotropically (RandAffine's scale_range is per axis)
        chain.append(RandZoom(prob=prob, min_zoom=1.0 - scale, max_zoom=1.0 + scale, keep_size=True,
                              mode="bilinear" if spatial_dims == 2 else "trilinear", padding_mode="edge"))
    if cfg.get("intensity_scale"):
        chain.append(RandScaleIntensity(factors=float(cfg["intensity_scale"]), prob=prob))
    if cfg.get("intensity_shift"):
        chain.append(RandShiftIntensity(offsets=float(cfg["intensity_shift"]), prob=prob))
    if cfg.get("noise_std"):
        chain.append(RandGaussianNoise(prob=prob, std=float(cfg["noise_std"])))
    return Augment(Compose(chain), seed) if chain else None


def _axis(axis, spatial_dims: int) -> int:
    if not 0 <= int(axis) < spatial_dims:
        raise ValueError(f"augment.flip_axes entries must be spatial axes in [0, {spatial_dims}), got {axis}")
    return int(axis)
