"""MedMNIST (v2 / MedMNIST+) .npz files read from disk; synthmed never downloads them.

One .npz holds every split (`train_images`, `train_labels`, `val_images`, ...), as uint8 arrays: 2D `[N, H, W]`
(e.g. pneumoniamnist) or `[N, H, W, 3]` (e.g. pathmnist), 3D `[N, H, W, D]` (e.g. organmnist3d). The official
splits are used as they are. Multi-label sets (chestmnist: `[N, 14]`) carry no `label` (an item label is one int).
Yang et al., "MedMNIST v2", Scientific Data 10, 41 (2023).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Resize

from synthmed.data.splits import check_split, fingerprint, to_plain
from synthmed.data.transforms import build_augment, plain

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's convert("L")


class MedMNISTDataset(torch.utils.data.Dataset):
    """One split of a MedMNIST .npz as `[C, H, W]` or `[1, H, W, D]` float32 items in [-1, 1].

    Args:
        split: "train" | "val" | "test" (the file's own splits).
        root: the .npz file (e.g. `~/.medmnist/pneumoniamnist.npz`); named `root` like every format's source.
        spatial_dims: 2 or 3; None infers it from the array shape (checked against it when given).
        channels: 1 (RGB converted to luminance) or 3 (grayscale replicated); 3D needs 1.
        size: spatial size to resize to (`spatial_dims` ints), or None to keep the file's size (28, 64, 128, 224).
        augment: augmentation settings (see `transforms.build_augment`), train split only.
        seed: augmentation seed.
        hash_contents: fingerprint the file's bytes instead of its size and mtime.

    Attributes:
        spatial_dims, channels, fingerprint (same for all splits), intensity (`linear` 0..255, 8 bits),
        geometry (None), labels (int64 `[N]`, or None for multi-label files).
    """

    format_name = "medmnist"

    def __init__(self, split: str, root, *, spatial_dims: int | None = None, channels: int = 1, size=None,
                 augment: dict | None = None, seed: int = 0, hash_contents: bool = False) -> None:
        check_split(split)
        self.split, self.path = split, _check_path(root)
        self.channels = int(channels)
        images, self.labels = _read_split(self.path, split)
        self.spatial_dims = _infer_dims(images.shape, spatial_dims, self.path)
        self.size = None if size is None else [int(s) for s in to_plain(size)]
        self._check_args()
        self.images = images
        self.intensity = {"kind": "linear", "native_min": 0, "native_max": 255, "bits": 8}
        self.geometry = None
        self.fingerprint = fingerprint([str(self.path)], {"format": self.format_name, "spatial_dims":
                                       self.spatial_dims, "channels": self.channels, "size": self.size},
                                       hash_contents)
        self._resize = Resize(self.size, mode="bilinear" if self.spatial_dims == 2 else "trilinear",
                              anti_aliasing=True) if self.size and self.size != self._native_size() else None
        self._augment = build_augment(self.spatial_dims, to_plain(augment), seed) if split == "train" else None

    def _check_args(self) -> None:
        if self.channels not in (1, 3) or (self.spatial_dims == 3 and self.channels != 1):
            raise ValueError(f"channels must be 1 or 3 (2D) or 1 (3D), got {self.channels} for a "
                             f"{self.spatial_dims}D file")
        if self.size is not None and (len(self.size) != self.spatial_dims or min(self.size) < 1):
            raise ValueError(f"size must be null or {self.spatial_dims} positive ints, got {self.size}")

    def _native_size(self) -> list[int]:
        return list(self.images.shape[1:1 + self.spatial_dims])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return self.item(i)

    def item(self, i: int, augment: bool = True) -> dict:
        """Item `i`: `image` `[C, H, W]` / `[1, H, W, D]` in [-1, 1], `id`, and `label` for single-label files.

        `augment=False` leaves out the training split's random augmentation: reference images for metrics.
        """
        image = torch.from_numpy(self._to_channels(self.images[i]))
        if self._resize is not None:
            image = plain(self._resize(image)).clamp_(-1.0, 1.0)
        if augment and self._augment is not None:
            image = self._augment(image)
        item = {"image": image.float().contiguous(), "id": f"{self.format_name}-{self.split}-{i:05d}"}
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return item

    def covariates(self) -> dict[str, np.ndarray]:
        """`{"label": [n]}` for single-label files, else `{}`; no image is decoded."""
        return {} if self.labels is None else {"label": self.labels.copy()}

    def _to_channels(self, arr: np.ndarray) -> np.ndarray:
        """uint8 `[H, W(, D)]` or `[H, W, 3]` -> float32 `[C, ...]` in [-1, 1]."""
        x = arr.astype(np.float32) / 127.5 - 1.0
        is_rgb = self.spatial_dims == 2 and x.ndim == 3
        x = x.transpose(2, 0, 1) if is_rgb else x[None]
        if self.channels == 1 and is_rgb:
            x = np.tensordot(_LUMA, x, axes=1)[None]
        elif self.channels == 3 and not is_rgb:
            x = np.repeat(x, 3, axis=0)
        return np.ascontiguousarray(x)


def _check_path(root) -> Path:
    if root is None or str(root) in ("", "???"):
        raise ValueError("MedMNIST file is not set: pass dataset.root=<file.npz>")
    p = Path(os.path.expanduser(str(root)))
    if not p.is_file():
        raise FileNotFoundError(
            f"MedMNIST file {p} not found. synthmed never downloads data: download it yourself (e.g. "
            f"`pip install medmnist && python -m medmnist download`, or from https://zenodo.org/records/10519652; "
            f"files land in ~/.medmnist/) and set root=<that .npz>")
    return p


def _read_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and single-column labels (None when absent or multi-label) of one split."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            if f"{split}_images" not in keys:
                raise ValueError(f"{path} has no key '{split}_images' (keys: {keys}); is it a MedMNIST .npz?")
            images = npz[f"{split}_images"]
            labels = npz[f"{split}_labels"] if f"{split}_labels" in keys else None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}); re-download it") from None
    if images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"{path}: '{split}_images' must be a non-empty uint8 array, got {images.dtype} "
                         f"of shape {images.shape}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{path}: '{split}_labels' has {len(labels)} rows but '{split}_images' has {len(images)}")
    if labels is not None:
        labels = labels.reshape(len(labels), -1)
        labels = labels[:, 0].astype(np.int64) if labels.shape[1] == 1 else None
    return images, labels


def _infer_dims(shape: tuple, spatial_dims: int | None, path: Path) -> int:
    """[N, H, W] and [N, H, W, 3] are 2D, [N, H, W, D] (D != 3) is 3D."""
    if len(shape) == 3 or (len(shape) == 4 and shape[-1] == 3):
        found = 2
    elif len(shape) == 4:
        found = 3
    else:
        raise ValueError(f"{path}: images of shape {shape}; expected [N, H, W], [N, H, W, 3] or [N, H, W, D]")
    if spatial_dims is not None and int(spatial_dims) != found:
        raise ValueError(f"spatial_dims={spatial_dims} but {path} holds {found}D images of shape {shape}")
    return found
