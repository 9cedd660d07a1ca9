"""Volumes (NIfTI, DICOM series): 3D training, or 2D training on slices, with the MONAI preprocessing chain
load -> RAS orientation -> resampling to `spacing` -> intensity to [-1, 1] -> crop/pad to `size`.
"""

from __future__ import annotations

import logging
import math
from functools import cached_property

import numpy as np
import torch
from monai.transforms import Compose

from synthmed.data.file_dataset import FileDataset
from synthmed.data.splits import to_plain
from synthmed.data.transforms import check_intensity_config, intensity_record, to_plain_tensor, volume_pipeline

log = logging.getLogger(__name__)
FOREGROUND = -0.9  # a pixel above this ([-1, 1] units, 5 % of the intensity range) counts as foreground


class VolumeDataset(FileDataset):
    """Base of the volume formats: items are volumes `[1, H, W, D]` (3D) or slices `[1, H, W]` (2D).

    Args:
        split: "train" | "val" | "test".
        root: a folder, or a CSV manifest.
        spatial_dims: 3 = volumes; 2 = slices along `slice_axis` (splits are still drawn per volume).
        channels: must be 1 (one grayscale volume per item).
        size: voxels after crop/pad, 3 ints (3D) or 2 in-plane ints (2D; the slice axis keeps its extent).
        spacing: voxel size in mm after resampling (3 floats, RAS order), or None to keep each file's spacing.
        intensity: `{"mode": "ct" | "mr", "window": [lo, hi] HU, "percentiles": [lo, hi]}`.
        slice_axis: 2D only; RAS axis sliced: 0 sagittal, 1 coronal, 2 axial.
        slice_range: 2D only; `[start, stop]` fractions of the slice axis kept (drops near-empty ends), or None.
        skip_empty: 2D only; minimum foreground fraction of a kept slice (pixels above -0.9), or None to keep all.
        volume_index: which volume of a 4D file to use; None makes 4D files bad files (3D files ignore it).
        **kwargs: the `FileDataset` arguments (splits, on_bad, cache, augment, seed, ...).

    Attributes:
        geometry: `{"affine": 4x4 list, "spacing": [mm], "shape": [...], "orientation": "RAS", "slice_axis"}` of the
            first usable volume after preprocessing (all splits), for NIfTI/DICOM export. In 2D the affine's columns
            are reordered (in-plane axes, then the slice axis) so a `[H, W]` slice exports as `[H, W, 1]`.
    """

    def __init__(self, split: str, root, *, spatial_dims: int = 3, channels: int = 1, size=(32, 32, 32),
                 spacing=None, intensity: dict | None = None, slice_axis: int = 2, slice_range=None,
                 skip_empty: float | None = None, volume_index: int | None = None, **kwargs) -> None:
        self.spacing = None if spacing is None else [float(s) for s in to_plain(spacing)]
        self.intensity_config = check_intensity_config(to_plain(intensity))
        self.slice_axis, self.volume_index = int(slice_axis), volume_index
        self.slice_range = None if slice_range is None else [float(s) for s in to_plain(slice_range)]
        self.skip_empty = skip_empty
        super().__init__(split, root, spatial_dims=spatial_dims, channels=channels, size=size, **kwargs)

    def _check_args(self) -> None:
        if self.channels != 1:
            raise ValueError(f"channels must be 1 for {self.format_name} volumes, got {self.channels}")
        if self.size is None or len(self.size) != self.spatial_dims or min(self.size) < 1:
            raise ValueError(f"size must be {self.spatial_dims} positive ints (voxels per axis), got {self.size}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be null or 3 positive floats (mm), got {self.spacing}")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2 (RAS axis), got {self.slice_axis}")
        if self.slice_range is not None and not (len(self.slice_range) == 2
                                                 and 0.0 <= self.slice_range[0] < self.slice_range[1] <= 1.0):
            raise ValueError(f"slice_range must be null or [start, stop] fractions with 0 <= start < stop <= 1, "
                             f"got {self.slice_range}")
        if self.skip_empty is not None and not 0.0 <= float(self.skip_empty) < 1.0:
            raise ValueError(f"skip_empty must be null or a foreground fraction in [0, 1), got {self.skip_empty}")
        if self.volume_index is not None and int(self.volume_index) < 0:
            raise ValueError(f"volume_index must be null or >= 0, got {self.volume_index}")

    def _settings(self) -> dict:
        return {"spacing": self.spacing, "intensity": self.intensity_config, "volume_index": self.volume_index,
                **({"slice_axis": self.slice_axis, "slice_range": self.slice_range, "skip_empty": self.skip_empty}
                   if self.spatial_dims == 2 else {})}

    def _loader(self):
        """The format's `LoadSource` (a MONAI Transform returning a channel-first MetaTensor).

        Optional: a subclass either provides this or overrides `_pipeline` (PairedNiftiDataset loads two files).
        """
        raise TypeError(f"{type(self).__name__} must define _loader() or override _pipeline()")

    def _volume_size(self) -> list[int]:
        """Crop/pad size per RAS axis; in 2D the slice axis is -1 (MONAI keeps that axis as it is)."""
        if self.spatial_dims == 3:
            return list(self.size)
        size = [-1, -1, -1]
        for axis, s in zip(self._in_plane(), self.size):
            size[axis] = s
        return size

    def _in_plane(self) -> list[int]:
        return [a for a in range(3) if a != self.slice_axis]

    def _pipeline(self) -> list:
        return volume_pipeline(self._loader(), self.spacing, self._volume_size(), self.intensity_config,
                               self.volume_index)

    def _transforms(self) -> list:
        return [*self._pipeline(), to_plain_tensor()]

    def _intensity(self, stats: list[dict]) -> dict:
        return intensity_record(self.intensity_config, stats)

    def _build_index(self) -> list[tuple[int, int | None]]:
        if self.spatial_dims == 3:
            return super()._build_index()
        if self.cache == "none":
            log.warning("%s: 2D slices with cache=none decode a whole volume per slice; use cache=memory or disk",
                        self.format_name)
        index = [(i, s) for i in range(len(self.records)) for s in self._kept_slices(self.load(i))]
        if not index:
            raise ValueError(f"no slice of split {self.split!r} under {self.root} passes slice_range="
                             f"{self.slice_range} and skip_empty={self.skip_empty}")
        return index

    def _kept_slices(self, volume: torch.Tensor) -> list[int]:
        """Slice indices inside `slice_range` whose foreground fraction reaches `skip_empty`."""
        n = volume.shape[1 + self.slice_axis]
        start, stop = self.slice_range or (0.0, 1.0)
        first = math.floor(start * n)
        candidates = range(first, min(n, max(math.ceil(stop * n), first + 1)))  # at least one slice per range
        if not self.skip_empty:
            return list(candidates)
        dims = [1 + a for a in self._in_plane()]
        fg = (volume > FOREGROUND).float().mean(dim=[0, *dims])  # foreground fraction per slice
        return [s for s in candidates if fg[s] >= float(self.skip_empty)]

    def _select(self, image: torch.Tensor, part: int | None) -> torch.Tensor:
        return image if part is None else image.select(1 + self.slice_axis, part)

    @cached_property
    def geometry(self) -> dict:
        """Reference geometry from the first usable volume (same for every split). Computed when first read (only
        the training split's is, for exports): it decodes and resamples a whole volume."""
        img = Compose(self._pipeline())({"source": self.good_records[0].source})
        affine = np.asarray(img.affine, dtype=np.float64)
        shape = [int(s) for s in img.shape[1:]]
        if self.spatial_dims == 2:  # columns: in-plane axes, then the slice axis
            order = [*self._in_plane(), self.slice_axis]
            affine = affine[:, [*order, 3]]
            shape = [shape[a] for a in order]
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        return {"affine": affine.tolist(), "spacing": [float(s) for s in spacing], "shape": shape,
                "orientation": "RAS", "slice_axis": self.slice_axis if self.spatial_dims == 2 else None}
