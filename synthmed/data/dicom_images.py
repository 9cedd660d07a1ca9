"""2D DICOM images: single-frame radiographs (CR/DX/MG), and the frames of multi-frame or series objects as slices.

`dataset=dicom` builds `dicom_dataset(...)`: volumes (`DicomDataset`, 3D) or frames (`DicomImageDataset`, 2D). In 2D
every image frame is an item in its acquired plane; files are still grouped by SeriesInstanceUID into records so the
splits are drawn per series (two views of one study never straddle train and val). Non-image objects (structured
reports, ECG waveforms, RT plans, presentation states) are listed in `not_images`, logged and left out: they are not
corrupt files, just not pictures.

Pixels follow the DICOM display chain through pydicom (see `dicom_pixels`): Modality LUT, then `intensity.mode`:
`ct` (a fixed window of modality values, HU for CT), `mr` (per-record percentiles), or `dicom_window` (each file's own
VOI LUT or WindowCenter/WindowWidth); MONOCHROME1 images are inverted so that bright means dense in every item.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from monai.transforms import Resize, ResizeWithPadOrCrop, Transform

from synthmed.data import dicom_pixels as px
from synthmed.data.dicom import DicomDataset
from synthmed.data.file_dataset import FileDataset
from synthmed.data.preflight import BadFileError, check_file, check_values
from synthmed.data.splits import Record, read_manifest, to_plain
from synthmed.data.transforms import check_intensity_config, to_plain_tensor

log = logging.getLogger(__name__)
MODES = ("ct", "mr", "dicom_window")
RESIZE_MODES = ("stretch", "pad")
FOREGROUND = -0.9  # as volume.FOREGROUND: a pixel above this counts as foreground for skip_empty
_VOLUME_ONLY = ("spacing", "slice_axis", "slice_range", "volume_index")


def dicom_dataset(split: str, root, *, spatial_dims: int = 3, resize: str = "pad", **kwargs):
    """`DicomDataset` (volumes) for `spatial_dims=3`, `DicomImageDataset` (frames) for 2; one YAML for both."""
    if int(spatial_dims) == 2:
        dropped = {k: kwargs.pop(k) for k in _VOLUME_ONLY if k in kwargs}
        if dropped.get("slice_axis") not in (None, 2) or dropped.get("spacing") is not None:
            log.warning("dicom 2D: items are frames in their acquired plane; slice_axis and spacing are ignored")
        return DicomImageDataset(split, root, resize=resize, **kwargs)
    if (to_plain(kwargs.get("intensity")) or {}).get("mode") == "dicom_window":
        raise ValueError("dataset.datamodule.dataset.intensity.mode=dicom_window is for 2D images "
                         "(dataset.spatial_dims=2); volumes use ct or mr")
    return DicomDataset(split, root, spatial_dims=spatial_dims, **kwargs)


def check_dicom_intensity(cfg: dict | None) -> dict:
    """`intensity` of a 2D DICOM data set: the volume checks, plus `mode: dicom_window`."""
    cfg = dict(to_plain(cfg) or {})
    mode = cfg.get("mode", "dicom_window")
    if mode not in MODES:
        raise ValueError(f"intensity.mode must be one of {MODES} for DICOM images, got {mode!r}")
    return {**check_intensity_config({**cfg, "mode": "ct" if mode == "dicom_window" else mode}), "mode": mode}


class DicomImageDataset(FileDataset):
    """DICOM image frames as 2D items `[1, H, W]` in [-1, 1].

    Args:
        split: "train" | "val" | "test".
        root: a folder (searched recursively) or a CSV manifest whose `image` column names a file or series folder.
        spatial_dims: must be 2.
        channels: must be 1 (grayscale: MONOCHROME1/2).
        size: `[H, W]` pixels after resizing.
        intensity: `{"mode": "ct" | "mr" | "dicom_window", "window": [lo, hi], "percentiles": [lo, hi]}`.
        resize: "pad" (longest side to `size`, then pad with -1; keeps the aspect ratio) or "stretch".
        skip_empty: minimum foreground fraction (pixels above -0.9) of a kept frame, or None to keep all.
        **kwargs: the `FileDataset` arguments (splits, on_bad, cache, augment, seed, ...).

    Attributes:
        not_images: `[(path, kind)]` non-image DICOM objects found and left out (all splits).
        intensity: the native -> [-1, 1] record exports invert (`window` bounds in modality units).
        geometry: `{"affine", "spacing", "shape", "orientation", "slice_axis": 2}` with the pixel spacing after
            resizing of the first usable image, for DICOM/NIfTI export.
    """

    format_name = "dicom"

    def __init__(self, split: str, root, *, spatial_dims: int = 2, channels: int = 1, size=(64, 64),
                 intensity: dict | None = None, resize: str = "pad", skip_empty: float | None = None,
                 **kwargs) -> None:
        px.pydicom()
        self.intensity_config, self.resize = check_dicom_intensity(intensity), resize
        self.skip_empty, self.not_images = skip_empty, []
        super().__init__(split, root, spatial_dims=spatial_dims, channels=channels, size=size, **kwargs)

    def _check_args(self) -> None:
        if self.spatial_dims != 2 or self.channels != 1:
            raise ValueError(f"DicomImageDataset needs spatial_dims=2 and channels=1, got {self.spatial_dims} and "
                             f"{self.channels}")
        if self.size is None or len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be [H, W] positive ints (pixels) for 2D DICOM, got {self.size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")

    def _settings(self) -> dict:
        return {"intensity": self.intensity_config, "resize": self.resize, "skip_empty": self.skip_empty,
                "layout": "frames"}

    def _discover(self) -> tuple[list[Record], list[str] | None]:
        if self.root.is_file():
            if self.root.suffix.lower() != ".csv":
                raise ValueError(f"root {self.root} is a file; expected a folder of DICOM files or a .csv manifest")
            records, classes = read_manifest(self.root, "image", self.label_column, self.attr_columns)
            return [Record(px.series_files(r.source) if os.path.isdir(r.source) else r.source, r.label, r.attrs,
                           r.split) for r in records], classes
        groups, self.not_images = px.scan_headers(self.root)
        if self.not_images:
            log.info("dicom: %d non-image object(s) left out (not counted as bad files):%s", len(self.not_images),
                     "".join(f"\n  {p}: not an image ({kind})" for p, kind in self.not_images))
        if not groups:
            raise FileNotFoundError(f"no DICOM image files (*.dcm, *.dicom, *.ima or files with a DICM preamble) "
                                    f"found under {self.root}" + (f"; {len(self.not_images)} non-image object(s) "
                                                                  "left out" if self.not_images else ""))
        return [Record(files if len(files) > 1 else files[0]) for files in groups], None

    def _scan(self, record: Record) -> dict:
        frames, stats = [], {"w_lo": [], "w_hi": [], "ct": []}
        for path in record.files:
            if not os.path.isfile(path):
                raise BadFileError("file or series folder not found (or it holds no DICOM file)", path=path)
            check_file(path)
            ds = px.read(path)
            if not px.is_image(ds):
                raise BadFileError(f"not an image ({px.not_image_kind(ds)})", path=path)
            frames += native_frames(ds, path)
            view = px.frame_view(ds, 0)
            if self.intensity_config["mode"] == "dicom_window":
                lo, hi = px.voi_bounds(view) if px.has_voi(view) else (np.nan, np.nan)
                stats["w_lo"].append(lo), stats["w_hi"].append(hi)
                px.voi_unit(frames[-1][0][:1, :1], frames[-1][1], path)  # raises when the file has no VOI
            stats["ct"].append(str(ds.get("Modality", "")) == "CT" or str(view.get("RescaleType", "")) == "HU")
        values = np.concatenate([v.reshape(-1) for v, _ in frames])
        percentiles = self.intensity_config["percentiles"] if self.intensity_config["mode"] == "mr" else None
        return {**check_values(values, percentiles), "w_lo": _median(stats["w_lo"]),
                "w_hi": _median(stats["w_hi"]), "hu": all(stats["ct"]), "spacing": _spacing(record.files[0]),
                "rows_cols": list(frames[0][0].shape)}

    def _intensity(self, stats: list[dict]) -> dict:
        cfg, hu = self.intensity_config, all(s["hu"] for s in stats)
        self._first_stats = stats[0]  # of the first usable record (all splits): the reference geometry
        if cfg["mode"] == "mr":
            return {"kind": "percentile", "lower": cfg["percentiles"][0], "upper": cfg["percentiles"][1],
                    "native_min": _median([s["p_lo"] for s in stats]),
                    "native_max": _median([s["p_hi"] for s in stats]), "unit": "a.u."}
        lo, hi = cfg["window"] if cfg["mode"] == "ct" else (_median([s["w_lo"] for s in stats]),
                                                           _median([s["w_hi"] for s in stats]))
        return {"kind": "window", "native_min": float(lo), "native_max": float(hi), "unit": "HU" if hu else "a.u.",
                "source": cfg["mode"]}

    def _transforms(self) -> list:
        return [LoadDicomFrames(self.intensity_config, self.size, self.resize), to_plain_tensor()]

    def _build_index(self) -> list[tuple[int, int | None]]:
        index = [(i, f) for i in range(len(self.records)) for f in self._kept_frames(self.load(i))]
        if not index:
            raise ValueError(f"no frame of split {self.split!r} under {self.root} passes skip_empty="
                             f"{self.skip_empty} (config key dataset.datamodule.dataset.skip_empty)")
        return index

    def _kept_frames(self, frames: torch.Tensor) -> list[int]:
        """Frames (last axis of `[1, H, W, F]`) whose foreground fraction reaches `skip_empty`."""
        if not self.skip_empty:
            return list(range(frames.shape[-1]))
        fg = (frames > FOREGROUND).float().mean(dim=(0, 1, 2))
        return [f for f in range(frames.shape[-1]) if fg[f] >= float(self.skip_empty)]

    def _select(self, image: torch.Tensor, part: int | None) -> torch.Tensor:
        return image[..., part]

    @property
    def geometry(self) -> dict:
        """Pixel spacing after resizing, as a 4x4 affine whose columns are the H axis, the W axis and a 1 mm
        third axis (what `export.write_dicom` turns into PixelSpacing)."""
        first = self._first_stats  # the pre-flight scan read the spacing: no file is opened again
        rows, cols = first["rows_cols"]
        row_mm, col_mm = first["spacing"]
        scale = _scales((rows, cols), self.size, self.resize)
        affine = np.diag([row_mm * scale[0], col_mm * scale[1], 1.0, 1.0])
        return {"affine": affine.tolist(), "spacing": [float(v) for v in np.diag(affine)[:3]],
                "shape": [*self.size, 1], "orientation": "RAS", "slice_axis": 2}


class LoadDicomFrames(Transform):
    """`{"source": file or files}` -> float32 tensor `[1, H, W, F]` in [-1, 1]: every frame of the record, in
    instance/spatial order, through the display chain of `intensity` and resized to `size`."""

    def __init__(self, intensity: dict, size, resize: str) -> None:
        self.intensity, self.size, self.resize = intensity, [int(s) for s in size], resize

    def __call__(self, item: dict) -> torch.Tensor:
        files = item["source"] if isinstance(item["source"], (list, tuple)) else [item["source"]]
        frames = [f for path in _instance_order(files) for f in native_frames(px.read(path), path)]
        bounds = _percentile_bounds(frames, self.intensity) if self.intensity["mode"] == "mr" else None
        out = [self._resize(to_unit(values, view, self.intensity, bounds)) for values, view in frames]
        return torch.stack(out, dim=-1)[None]

    def _resize(self, unit: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(unit.astype(np.float32))[None]
        if self.resize == "stretch":
            return Resize(self.size, mode="bilinear", anti_aliasing=True)(x)[0].as_tensor()
        x = Resize(max(self.size), size_mode="longest", mode="bilinear", anti_aliasing=True)(x)
        return ResizeWithPadOrCrop(self.size, value=-1.0)(x)[0].as_tensor()


def native_frames(ds, path: str) -> list[tuple[np.ndarray, object]]:
    """[(modality values `[rows, cols]` float64, the frame's view)] in spatial order; the view carries the frame's
    window and photometric interpretation."""
    stored = px.decode(ds, path)
    out = []
    for f in px.frame_order(ds):
        view = px.frame_view(ds, f)
        out.append((px.modality_values(stored[f], view), view))
    return out


def to_unit(values: np.ndarray, view, intensity: dict, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Modality values of one frame -> [-1, 1] by `intensity.mode`, inverted for MONOCHROME1."""
    if intensity["mode"] == "dicom_window":
        unit = px.voi_unit(values, view, "")
    else:
        lo, hi = bounds if bounds is not None else intensity["window"]
        unit = (values - lo) / (hi - lo) * 2.0 - 1.0
    unit = np.clip(unit, -1.0, 1.0)
    return -unit if px.inverted(view) else unit


def _percentile_bounds(frames: list, intensity: dict) -> tuple[float, float]:
    values = np.concatenate([v.reshape(-1) for v, _ in frames])
    lo, hi = (float(v) for v in np.percentile(values, intensity["percentiles"]))
    return lo, hi


def _instance_order(files) -> list[str]:
    """Files of one series by InstanceNumber (then name): the order their frames become item indices."""
    def key(path):
        try:
            header = px.pydicom().dcmread(path, stop_before_pixels=True, specific_tags=["InstanceNumber"])
            return int(header.get("InstanceNumber", 0) or 0), path
        except Exception:
            return 0, path
    return sorted(files, key=key)


def _spacing(path: str) -> list[float]:
    return list(px.pixel_spacing(px.pydicom().dcmread(path, stop_before_pixels=True)))


def _scales(native: tuple[int, int], size, resize: str) -> tuple[float, float]:
    """mm-per-pixel factor of each axis after resizing `native` (rows, cols) to `size`."""
    if resize == "stretch":
        return native[0] / size[0], native[1] / size[1]
    factor = max(native) / max(size)
    return factor, factor


def _median(values: list) -> float:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")
