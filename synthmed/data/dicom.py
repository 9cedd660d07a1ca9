"""DICOM series (one volume per series) read with MONAI's PydicomReader; same preprocessing as NIfTI.

Series are found under `root` recursively and grouped by SeriesInstanceUID, so both layouts work: one sub-folder
per series, or many series mixed in one folder. Candidate files are `*.dcm`/`*.dicom`/`*.ima` (always checked, so
a corrupt one is reported) and extension-less files with the DICM preamble (so a README never counts). A manifest
CSV may instead list one series folder per row in its `image` column. Needs the optional extra `synthmed[dicom]`.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from monai.data import PydicomReader
from monai.utils import ensure_tuple

from synthmed.data import dicom_pixels as px
from synthmed.data.file_dataset import LoadSource
from synthmed.data.preflight import (
    BadFileError,
    check_file,
    check_spacing,
    check_values,
)
from synthmed.data.splits import Record, read_manifest
from synthmed.data.volume import VolumeDataset

SUFFIXES = px.SUFFIXES
log = logging.getLogger(__name__)


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImportError("DICOM support needs pydicom: pip install 'synthmed[dicom]'") from None
    return pydicom


class SeriesReader(PydicomReader):
    """PydicomReader that reads an explicit list of files as *one* series.

    MONAI's reader treats a folder as a series but a list of files as channels; grouping by SeriesInstanceUID
    needs the former for a list. Relies on PydicomReader's `filenames`/`has_series` protocol (MONAI >= 1.3).
    """

    def read(self, data, **kwargs):
        files = [str(f) for f in ensure_tuple(data)]
        pydicom = _pydicom()
        slices = [pydicom.dcmread(f, **{**self.kwargs, **kwargs}) for f in files]
        self.has_series = len(slices) > 1
        self.filenames = [files] if self.has_series else files
        return slices if self.has_series else slices[0]

    def get_data(self, data):
        """A multi-frame object (one file) becomes a volume with its per-frame geometry and rescale; series and
        single files go through MONAI."""
        if self.has_series or int(data.get("NumberOfFrames", 1) or 1) < 2:
            return super().get_data(data)
        array, affine = px.multiframe_volume(data, self.filenames[0])
        meta = {"affine": affine, "original_affine": affine.copy(), "spatial_shape": array.shape,
                "original_channel_dim": float("nan"), "space": "RAS"}
        return array, meta


class DicomDataset(VolumeDataset):
    """DICOM series as volumes (3D training) or slices (2D); CT in HU via RescaleSlope/Intercept.

    Arguments as `VolumeDataset` (and `FileDataset`); items `{"image", "id": "dicom-<split>-<index>", ...}`. No
    header field (patient, UIDs, dates) enters an item or the fingerprint beyond file names, sizes and mtimes.
    """

    format_name = "dicom"

    def _discover(self) -> tuple[list[Record], list[str] | None]:
        if self.root.is_file():
            if self.root.suffix.lower() != ".csv":
                raise ValueError(f"root {self.root} is a file; expected a folder of DICOM series or a .csv manifest")
            records, classes = read_manifest(self.root, "image", self.label_column, self.attr_columns)
            return [Record(px.series_files(r.source), r.label, r.attrs, r.split) for r in records], classes
        series = find_series(self.root)
        if not series:
            raise FileNotFoundError(f"no DICOM files (*.dcm, *.dicom, *.ima or files with a DICM preamble) found "
                                    f"under {self.root}")
        return [Record(files) for files in series], None

    def _loader(self) -> LoadSource:
        _pydicom()
        return LoadSource(SeriesReader())

    def _scan(self, record: Record) -> dict:
        check_series_headers(record.files)
        try:
            img = self._loader()({"source": record.source})
        except Exception as e:
            raise BadFileError(f"series could not be decoded ({type(e).__name__}: {e})") from None
        affine = np.asarray(img.affine, dtype=np.float64)
        check_spacing(np.linalg.norm(affine[:3, :3], axis=0), affine)
        percentiles = self.intensity_config["percentiles"] if self.intensity_config["mode"] == "mr" else None
        return check_values(np.asarray(img), percentiles)


def find_series(root) -> list[tuple[str, ...]]:
    """DICOM image files under `root` grouped by SeriesInstanceUID (by folder when absent), sorted for determinism;
    non-image objects (reports, waveforms) are logged and left out (`dicom_pixels.scan_headers`)."""
    groups, not_images = px.scan_headers(root)
    for path, kind in not_images:
        log.info("dicom: %s is not an image (%s); left out", path, kind)
    return groups


def check_series_headers(files: tuple[str, ...]) -> None:
    """Header-level checks of one series; raises `BadFileError` naming the offending file."""
    pydicom = _pydicom()
    headers = []
    for path in files:
        if not os.path.isfile(path):
            raise BadFileError("series folder or file not found (or it holds no DICOM file)", path=path)
        check_file(path)
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as e:
            raise BadFileError(f"not a readable DICOM file ({type(e).__name__}: {e})", path=path) from None
    _check_series_consistency(files, headers)


def _check_series_consistency(files: tuple[str, ...], headers: list) -> None:
    if len({str(h.get("SeriesInstanceUID", "")) for h in headers}) > 1:
        raise BadFileError("folder mixes several series (SeriesInstanceUID differs); one series per folder")
    if int(headers[0].get("NumberOfFrames", 1) or 1) > 1:
        if len(headers) > 1:
            raise BadFileError("a multi-frame object among other files of its series; one multi-frame file is one "
                               "volume", path=files[0])
        return  # geometry checked by multiframe_volume when it is read
    if len(headers) < 2:
        raise BadFileError("wrong dimensionality: a single 2D slice, expected a series of >= 2 slices",
                           path=files[0])
    for path, h in zip(files, headers):
        if "Rows" not in h:
            raise BadFileError("no image (no Rows/PixelData; e.g. a report or structured document)", path=path)
        if "InstanceNumber" not in h:  # MONAI would drop it with a warning: a silent hole in the volume
            raise BadFileError("missing InstanceNumber (slice order unknown)", path=path)
        spacing = [float(v) for v in h.get("PixelSpacing", [1.0, 1.0])]
        if min(spacing) <= 0:
            raise BadFileError(f"zero or negative PixelSpacing {spacing}", path=path)
    if len({(int(h.Rows), int(h.Columns)) for h in headers}) > 1:
        raise BadFileError("slices of different sizes (Rows/Columns) in one series")
    positions = [tuple(round(float(v), 4) for v in h.ImagePositionPatient) for h in headers
                 if "ImagePositionPatient" in h]
    if len(set(positions)) < len(positions):
        raise BadFileError("two slices share an ImagePositionPatient (zero slice spacing)")
