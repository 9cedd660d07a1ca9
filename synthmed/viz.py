"""Pictures of image batches: grids for 2D, three-plane montages for 3D, written as PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from synthmed.io import atomic_path


def central_planes(volumes: Tensor) -> Tensor:
    """The three central orthogonal planes of each volume side by side.

    Args:
        volumes: `[B, C, H, W, D]`.

    Returns:
        `[B, C, S, 3 * S]` with S = max(H, W, D) (axial, coronal, sagittal); padding is -1, i.e. black.
    """
    _, _, h, w, d = volumes.shape
    planes = [volumes[:, :, :, :, d // 2], volumes[:, :, :, w // 2, :], volumes[:, :, h // 2, :, :]]
    size = max(h, w, d)
    padded = [torch.nn.functional.pad(p, (0, size - p.shape[-1], 0, size - p.shape[-2]), value=-1.0)
              for p in planes]
    return torch.cat(padded, dim=-1)


def image_grid(images: Tensor, nrow: int | None = None) -> np.ndarray:
    """A uint8 picture `[H, W]` (grey) or `[H, W, 3]` of a batch `[B, C, H, W]` or `[B, C, H, W, D]` in [-1, 1]."""
    if images.ndim == 5:
        images = central_planes(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W] or [B, C, H, W, D], got shape {tuple(images.shape)}")
    images = images.detach().float().cpu().clamp(-1, 1)
    if images.shape[1] not in (1, 3):
        images = images[:, :1]  # multi-channel: show the first channel
    ncol = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid((images + 1) / 2, nrow=ncol, padding=2, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return array[..., 0] if images.shape[1] == 1 else array


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 picture atomically (temp file + rename): a half-written grid is never left behind."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)
