"""DICOM pixels -> numbers: decoding (any transfer syntax pydicom has a handler for), frames, the Modality LUT,
the VOI LUT or window, and the Presentation (MONOCHROME1 inversion), each through pydicom's own functions.

The DICOM display chain (PS3.4 N.2) is stored values -> Modality LUT (RescaleSlope/Intercept or a LUT; HU for CT)
-> VOI LUT (window center/width or a LUT table) -> Presentation LUT (MONOCHROME1 = inverted). Enhanced multi-frame
objects keep the rescale, window and position of each frame in the Per-frame / Shared Functional Groups; `frame_view`
copies them to the top level so pydicom's functions (which read top-level attributes) see the right frame's values.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from synthmed.data.preflight import BadFileError

# Attributes an enhanced (multi-frame) object keeps per frame, by the functional group sequence that holds them.
_FRAME_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness"),
}
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
SUFFIXES = (".dcm", ".dicom", ".ima")
HEADER_TAGS = ["SeriesInstanceUID", "Rows", "NumberOfFrames", "SOPClassUID", "Modality", "InstanceNumber"]


def pydicom():
    """The pydicom module, or an ImportError that names the extra to install."""
    try:
        import pydicom as module
    except ImportError:
        raise ImportError("DICOM support needs pydicom: pip install 'synthmed[dicom]'") from None
    return module


def is_image(header) -> bool:
    """An image object has an Image Pixel module (Rows); SR, RT plans, waveforms (ECG) and presentation states do
    not, whatever their file name says."""
    return "Rows" in header


def not_image_kind(header) -> str:
    """A short, user-facing name of a non-image object, from its Modality or SOP class."""
    names = {"SR": "structured report", "ECG": "ECG waveform", "RTPLAN": "RT plan", "PR": "presentation state",
             "KO": "key object selection", "DOC": "encapsulated document"}
    modality = str(header.get("Modality", ""))
    sop = header.get("SOPClassUID")
    return names.get(modality) or (getattr(sop, "name", "") or str(sop or "unknown object"))


def read(path: str):
    """The whole dataset of one file with its pixel data decoded on access; a clear error for an unreadable file."""
    try:
        return pydicom().dcmread(path)
    except Exception as e:
        raise BadFileError(f"not a readable DICOM file ({type(e).__name__}: {e})", path=path) from None


def decode(ds, path: str) -> np.ndarray:
    """Stored values of every frame `[F, rows, cols]` (a single-frame image has F = 1).

    Compressed transfer syntaxes (JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE) decode through pydicom's pixel
    handlers; when no installed plugin can, the error names the transfer syntax and the extra to install.
    """
    if str(ds.get("PhotometricInterpretation", "")) not in GRAYSCALE:
        raise BadFileError(f"PhotometricInterpretation {ds.get('PhotometricInterpretation')!r}: expected a "
                           f"grayscale image {GRAYSCALE}", path=path)
    try:
        arr = ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise BadFileError(f"pixel data could not be decoded (transfer syntax {name}; compressed data needs "
                           f"pip install 'synthmed[dicom]' for the pylibjpeg decoders): {type(e).__name__}: {e}",
                           path=path) from None
    return arr[None] if int(ds.get("NumberOfFrames", 1) or 1) == 1 else arr


def frame_view(ds, frame: int):
    """A shallow copy of `ds` whose top-level rescale/window/position attributes are those of frame `frame`
    (Per-frame Functional Groups win over Shared ones, which win over the top level)."""
    view = px_dataset(ds)
    for groups_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(groups_name)
        if not groups:
            continue
        item = groups[0] if groups_name.startswith("Shared") else groups[frame]
        for seq_name, keywords in _FRAME_GROUPS.items():
            for sub in item.get(seq_name) or []:
                for kw in keywords:
                    if kw in sub:
                        setattr(view, kw, sub[kw].value)
    return view


def px_dataset(ds):
    """A new Dataset holding `ds`'s top-level elements except the pixels and functional groups (a `copy.copy`
    would share the element dict, so setting a frame's attributes would change `ds` itself)."""
    skip = {"PixelData", "FloatPixelData", "DoubleFloatPixelData", "PerFrameFunctionalGroupsSequence",
            "SharedFunctionalGroupsSequence"}
    view = pydicom().Dataset()
    for elem in ds:
        if elem.keyword not in skip:
            view.add(elem)
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    return view


def modality_values(stored: np.ndarray, view) -> np.ndarray:
    """Modality LUT (RescaleSlope/Intercept or Modality LUT Sequence): stored values -> e.g. HU, float64."""
    return np.asarray(pydicom().pixels.apply_modality_lut(stored, view), dtype=np.float64)


def has_voi(view) -> bool:
    return bool(view.get("VOILUTSequence")) or ("WindowCenter" in view and "WindowWidth" in view)


def voi_unit(values: np.ndarray, view, path: str) -> np.ndarray:
    """VOI LUT or window (pydicom's `apply_voi_lut`) on modality values, rescaled to [-1, 1] by the VOI output's own
    range, which is found by passing the two most extreme inputs through the same function (the output saturates)."""
    if not has_voi(view):
        raise BadFileError("intensity.mode=dicom_window but the file has neither a VOI LUT Sequence nor "
                           "WindowCenter/WindowWidth; use intensity.mode=ct (fixed window) or mr (percentiles)",
                           path=path)
    apply = pydicom().pixels.apply_voi_lut
    lut = bool(view.get("VOILUTSequence"))
    inputs = np.rint(values).astype(np.int64) if lut else values  # a LUT is indexed by integers
    out = np.asarray(apply(inputs, view), dtype=np.float64)
    extremes = np.array([-(2 ** 40), 2 ** 40], dtype=np.int64 if lut else np.float64)
    lo, hi = (float(v) for v in np.asarray(apply(extremes, view), dtype=np.float64))
    if not hi > lo:
        raise BadFileError(f"VOI LUT/window maps every value to {lo:g}", path=path)
    return (out - lo) / (hi - lo) * 2.0 - 1.0


def voi_bounds(view) -> tuple[float, float]:
    """Modality values at the ends of the VOI window or LUT (what an export's [-1, 1] maps back to)."""
    if view.get("VOILUTSequence"):
        descriptor = [int(v) for v in view.VOILUTSequence[0].LUTDescriptor]
        entries = descriptor[0] or 2 ** 16
        return float(descriptor[1]), float(descriptor[1] + entries - 1)
    center, width = (_first(view.WindowCenter), _first(view.WindowWidth))
    return center - width / 2.0, center + width / 2.0


def _first(value) -> float:
    """WindowCenter/Width may hold several alternative views; the first is the default one."""
    return float(value[0]) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else float(value)


def inverted(ds) -> bool:
    """MONOCHROME1: the lowest value is displayed white; such images are inverted so bright means dense everywhere."""
    return str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"


def pixel_spacing(ds) -> tuple[float, float]:
    """(row, column) spacing in mm: PixelSpacing, else ImagerPixelSpacing (projection radiographs), else 1 mm."""
    view = frame_view(ds, 0)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in view and view.get(keyword):
            row, col = (float(v) for v in view.get(keyword)[:2])
            if row > 0 and col > 0:
                return row, col
    return 1.0, 1.0


def frame_order(ds) -> list[int]:
    """Frames of a multi-frame object in spatial order (along the slice normal) when every frame has a position,
    else in stored order."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    views = [frame_view(ds, f) for f in range(n)]
    if n == 1 or not all("ImagePositionPatient" in v and "ImageOrientationPatient" in v for v in views):
        return list(range(n))
    orientation = np.asarray([float(v) for v in views[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    depth = [float(np.dot(normal, [float(p) for p in v.ImagePositionPatient])) for v in views]
    return [int(i) for i in np.argsort(depth, kind="stable")]


def multiframe_volume(ds, path: str) -> tuple[np.ndarray, np.ndarray]:
    """An enhanced multi-frame object as one volume: (modality values `[cols, rows, frames]` float32, RAS affine).

    Frames are ordered along the slice normal and each gets its own rescale (Per-frame Functional Groups); the affine
    comes from the shared orientation and pixel spacing and the per-frame positions, in MONAI's index order (i along
    a row, j down the columns, k through the frames), converted from DICOM's LPS to RAS.
    """
    order = frame_order(ds)
    views = [frame_view(ds, f) for f in order]
    if len(order) < 2 or not all("ImagePositionPatient" in v for v in views):
        raise BadFileError("multi-frame object without per-frame ImagePositionPatient: its frames cannot be "
                           "stacked into a volume (use dataset.spatial_dims=2 to train on its frames)", path=path)
    stored = decode(ds, path)
    volume = np.stack([modality_values(stored[f], v) for f, v in zip(order, views)])  # [frames, rows, cols]
    orientation = np.asarray([float(x) for x in views[0].ImageOrientationPatient])
    row_mm, col_mm = (float(x) for x in views[0].PixelSpacing)
    positions = np.asarray([[float(x) for x in v.ImagePositionPatient] for v in views])
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * col_mm  # i: along a row (across columns)
    lps[:3, 1] = orientation[3:] * row_mm  # j: down a column (across rows)
    lps[:3, 2] = positions[1] - positions[0]  # k: frame to frame
    lps[:3, 3] = positions[0]
    return volume.transpose(2, 1, 0).astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


# ---- finding DICOM files -----------------------------------------------------------------------------------------

def candidates(root) -> list[str]:
    """`*.dcm`/`*.dicom`/`*.ima` under `root` (always, so a corrupt one is reported) and extension-less files with
    the DICM preamble (so a README never counts); hidden entries and DICOMDIR skipped, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            if name.lower().endswith(SUFFIXES) or ("." not in name and pydicom().misc.is_dicom(path)):
                found.append(path)
    return found


def series_files(folder: str) -> tuple[str, ...]:
    """A manifest row names a series folder; a missing or empty one stays a record so pre-flight reports it."""
    files = candidates(folder) if os.path.isdir(folder) else []
    return tuple(files) or (folder,)


def scan_headers(root) -> tuple[list[tuple[str, ...]], list[tuple[str, str]]]:
    """Image files under `root` grouped by SeriesInstanceUID (by folder when absent), and the non-image objects.

    Returns:
        (sorted groups of file paths, [(path, kind)] of non-image objects). An unreadable file is a group of its
        own, so the pre-flight check names exactly that file.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    not_images = []
    for path in candidates(root):
        try:
            header = pydicom().dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except Exception:
            groups[f"unreadable:{path}"].append(path)
            continue
        if not is_image(header) and "SOPClassUID" in header:
            not_images.append((path, not_image_kind(header)))
            continue
        groups[str(header.get("SeriesInstanceUID", "")) or f"folder:{os.path.dirname(path)}"].append(path)
    return sorted((tuple(sorted(files)) for files in groups.values()), key=lambda f: f[0]), not_images
