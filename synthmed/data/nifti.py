"""NIfTI volumes (.nii, .nii.gz) from a folder or a CSV manifest, read with nibabel through MONAI's LoadImage.

4D files (fMRI, DWI, example4d.nii.gz): a configured `volume_index` picks one volume; without it a 4D file is a bad
file ("set volume_index"), because silently training on volume 0 of a time series is rarely what was meant.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from monai.data import NibabelReader

from synthmed.data.file_dataset import LoadSource
from synthmed.data.preflight import BadFileError, check_file, check_spacing, check_values
from synthmed.data.splits import Record, find_files, read_manifest
from synthmed.data.volume import VolumeDataset

SUFFIXES = (".nii", ".nii.gz")


class NiftiDataset(VolumeDataset):
    """NIfTI-1/2 volumes for 3D training or 2D training on slices.

    `root` is a folder (searched recursively for *.nii, *.nii.gz; no labels) or a CSV manifest with an `image`
    column (paths relative to the CSV), optional `label`, covariate columns named in `attr_columns` and an optional
    `split` column. See `VolumeDataset` for the preprocessing arguments and `FileDataset` for the rest.

    Items: `{"image": [1, H, W, D] or [1, H, W] float32 in [-1, 1], "id": "nifti-<split>-<index>[-s<slice>]",
    "label"?: int, "attrs"?: dict}`.
    """

    format_name = "nifti"

    def _discover(self) -> tuple[list[Record], list[str] | None]:
        if self.root.is_file():
            if self.root.suffix.lower() != ".csv":
                raise ValueError(f"root {self.root} is a file; expected a folder of .nii/.nii.gz or a .csv manifest")
            return read_manifest(self.root, "image", self.label_column, self.attr_columns)
        return [Record(f) for f in find_files(self.root, SUFFIXES)], None

    def _loader(self) -> LoadSource:
        return LoadSource(NibabelReader())

    def _scan(self, record: Record) -> dict:
        return scan_nifti(record.source, self.spatial_dims, self.volume_index,
                          self.intensity_config["percentiles"] if self.intensity_config["mode"] == "mr" else None)


def scan_nifti(path: str, spatial_dims: int, volume_index: int | None, percentiles=None) -> dict:
    """Pre-flight check of one NIfTI file: container, header, dimensionality, spacing, every voxel.

    Returns:
        `check_values` stats of the volume that will be used. Raises `BadFileError` with the cause.
    """
    if not path.lower().endswith(SUFFIXES):
        raise BadFileError(f"not a NIfTI file name (expected {'/'.join(SUFFIXES)})")
    if not os.path.isfile(path):
        raise BadFileError("file not found")
    check_file(path)
    try:
        img = nib.load(path)
    except Exception as e:
        raise BadFileError(f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise BadFileError(f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    _check_shape(img.shape, spatial_dims, volume_index)
    check_spacing(_raw_pixdim(path, img), img.affine)
    try:  # the full read: a truncated or corrupt payload fails here, not in a worker mid-epoch
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:
        raise BadFileError(f"truncated or corrupt image data ({type(e).__name__}: {e})") from None
    if data.ndim == 4:
        data = data[..., volume_index or 0]
    return check_values(data, percentiles)


def _raw_pixdim(path: str, img) -> np.ndarray:
    """Voxel sizes as stored: nibabel's header check silently 'fixes' zero (-> 1) and negative (-> abs) pixdim,
    which would hide exactly the defect we report."""
    with nib.openers.ImageOpener(path) as f:
        raw = img.header_class.from_fileobj(f, check=False)
    n_spatial = min(3, int(raw["dim"][0]))
    return np.asarray(raw["pixdim"][1:1 + n_spatial], dtype=np.float64)


def _check_shape(shape: tuple, spatial_dims: int, volume_index: int | None) -> None:
    if len(shape) < 3:
        raise BadFileError(f"wrong dimensionality: {len(shape)}D image of shape {shape}, expected a 3D volume")
    if len(shape) > 4:
        raise BadFileError(f"wrong dimensionality: {len(shape)}D image of shape {shape}, expected 3D (or 4D with "
                           "volume_index)")
    if len(shape) == 4 and shape[3] > 1 and volume_index is None:
        raise BadFileError(f"4D image of shape {shape} ({shape[3]} volumes); set volume_index to pick one")
    if len(shape) == 4 and volume_index is not None and volume_index >= shape[3]:
        raise BadFileError(f"volume_index={volume_index} but the 4D image has only {shape[3]} volume(s)")
    if spatial_dims == 3 and min(shape[:3]) < 2:
        raise BadFileError(f"wrong dimensionality: single-slice image of shape {shape}, expected a 3D volume")
