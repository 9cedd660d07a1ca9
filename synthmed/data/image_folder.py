"""2D images (PNG, JPEG, TIFF, BMP; 8- or 16-bit; grayscale or RGB) from class folders or a CSV manifest.

Layouts: MedNIST style `root/<ClassName>/*.jpeg` (label = index of the class in sorted class names), a flat folder
(no labels), or a CSV (chest X-ray style) with `image`, optional `label`, covariates and `split`. Every image maps
its own bit depth's full range to [-1, 1] (0 -> -1, 255 or 65535 -> 1), so 8- and 16-bit files of one picture agree;
`intensity` records the deepest depth found, which exports then use.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Resize, ResizeWithPadOrCrop, Transform
from PIL import Image

from synthmed.data.file_dataset import FileDataset
from synthmed.data.preflight import BadFileError, check_file
from synthmed.data.splits import Record, find_files, read_manifest
from synthmed.data.transforms import to_plain_tensor

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
RESIZE_MODES = ("stretch", "pad")
_GRAY16 = ("I;16", "I;16B", "I;16L", "I;16N")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, what PIL's convert("L") uses


class ImageFolderDataset(FileDataset):
    """2D image files as `[C, H, W]` items in [-1, 1].

    Args:
        split: "train" | "val" | "test".
        root: a folder (class sub-folders or flat) or a CSV manifest.
        spatial_dims: must be 2.
        channels: 1 (RGB converted to luminance) or 3 (grayscale replicated).
        size: `[H, W]` after resizing.
        resize: "stretch" (to `size`, aspect ratio changes) or "pad" (longest side to `size`, then pad with -1).
        labels_from_folders: in folder mode, label = class sub-folder; False ignores sub-folder names.
        **kwargs: the `FileDataset` arguments (splits, on_bad, cache, augment, seed, ...).

    Attributes:
        classes: sorted class names (folder mode with labels, or string labels in a manifest), else None.
        intensity: `{"kind": "linear", "native_min": 0, "native_max": 255 | 65535, "bits": 8 | 16}`.
        geometry: None (2D images have no patient geometry; NIfTI export then uses 1 mm pixels).
    """

    format_name = "image"

    def __init__(self, split: str, root, *, spatial_dims: int = 2, channels: int = 1, size=(64, 64),
                 resize: str = "stretch", labels_from_folders: bool = True, **kwargs) -> None:
        self.resize, self.labels_from_folders = resize, bool(labels_from_folders)
        self.geometry = None
        super().__init__(split, root, spatial_dims=spatial_dims, channels=channels, size=size, **kwargs)

    def _check_args(self) -> None:
        if self.spatial_dims != 2:
            raise ValueError(f"spatial_dims must be 2 for image files, got {self.spatial_dims}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels}")
        if self.size is None or len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be [H, W] positive ints (pixels), got {self.size}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")

    def _settings(self) -> dict:
        return {"resize": self.resize, "labels_from_folders": self.labels_from_folders}

    def _discover(self) -> tuple[list[Record], list[str] | None]:
        if self.root.is_file():
            if self.root.suffix.lower() != ".csv":
                raise ValueError(f"root {self.root} is a file; expected a folder of images or a .csv manifest")
            return read_manifest(self.root, "image", self.label_column, self.attr_columns)
        files = find_files(self.root, SUFFIXES)
        nested = [len(Path(f).relative_to(self.root).parts) > 1 for f in files]
        if not self.labels_from_folders or not any(nested):
            return [Record(f) for f in files], None
        if not all(nested):
            loose = [f for f, n in zip(files, nested) if not n]
            raise ValueError(f"labels_from_folders=true but {len(loose)} image(s) lie directly in {self.root} "
                             f"outside any class folder (e.g. {loose[0]}); move them or set labels_from_folders=false")
        names = [Path(f).relative_to(self.root).parts[0] for f in files]
        classes = sorted(set(names))
        return [Record(f, label=classes.index(n)) for f, n in zip(files, names)], classes

    def _scan(self, record: Record) -> dict:
        return scan_image(record.source)

    def _intensity(self, stats: list[dict]) -> dict:
        bits = max(s["bits"] for s in stats)
        return {"kind": "linear", "native_min": 0, "native_max": 2 ** bits - 1, "bits": bits}

    def _transforms(self) -> list:
        if self.resize == "stretch":
            sizing = [Resize(self.size, mode="bilinear", anti_aliasing=True)]
        else:
            sizing = [Resize(max(self.size), size_mode="longest", mode="bilinear", anti_aliasing=True),
                      ResizeWithPadOrCrop(self.size, value=-1.0)]
        return [LoadImageFile(self.channels), *sizing, to_plain_tensor()]


class LoadImageFile(Transform):
    """`{"source": path}` -> float32 tensor `[channels, H, W]` in [-1, 1] (own bit depth's full range)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, item: dict) -> torch.Tensor:
        return torch.from_numpy(read_image(item["source"], self.channels))


def read_image(path: str, channels: int) -> np.ndarray:
    """Reads one image file.

    Returns:
        float32 array `[channels, H, W]` in [-1, 1].
    """
    with Image.open(path) as im:
        im.load()
        bits, im = _normalize_mode(im)
        arr = np.asarray(im, dtype=np.float32) / (2 ** bits - 1) * 2.0 - 1.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if channels == 3 and arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    elif channels == 1 and arr.shape[0] == 3:
        arr = np.tensordot(_LUMA, arr, axes=1)[None]
    return np.ascontiguousarray(arr, dtype=np.float32)


def _normalize_mode(im: Image.Image) -> tuple[int, Image.Image]:
    """(bit depth, image in mode L, RGB or I;16). Float and 32-bit images have no fixed range: rejected."""
    if im.mode in _GRAY16:
        return 16, im
    if im.mode in ("L", "RGB"):
        return 8, im
    if im.mode in ("1", "LA", "La"):
        return 8, im.convert("L")
    if im.mode in ("P", "PA"):
        return 8, im.convert("RGBA" if "transparency" in im.info else "RGB").convert("RGB")
    if im.mode in ("RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return 8, im.convert("RGB")
    if im.mode == "I":  # 32-bit int: accepted when it holds 16-bit data (some 16-bit files decode this way)
        arr = np.asarray(im)
        if arr.min() >= 0 and arr.max() <= 65535:
            return 16, Image.fromarray(arr.astype(np.uint16))
    raise BadFileError(f"unsupported pixel mode {im.mode!r} (float or 32-bit data has no fixed intensity range); "
                       "convert to 8- or 16-bit")


def scan_image(path: str) -> dict:
    """Pre-flight check of one image file: exists, decodes completely, supported mode, non-empty.

    Returns:
        `{"bits": 8 | 16, "height": H, "width": W}`; raises `BadFileError` with the cause.
    """
    if not os.path.isfile(path):
        raise BadFileError("file not found")
    check_file(path)
    try:
        with Image.open(path) as im:
            im.verify()  # container-level checks (PNG chunk CRCs)
        with Image.open(path) as im:
            im.load()  # the full decode: a truncated file fails here, not in a worker mid-epoch
            bits, im = _normalize_mode(im)
            width, height = im.size
    except BadFileError:
        raise
    except Exception as e:
        raise BadFileError(f"not a readable image or truncated ({type(e).__name__}: {e})") from None
    if width == 0 or height == 0:
        raise BadFileError(f"empty image ({width}x{height} pixels)")
    return {"bits": bits, "height": height, "width": width}
