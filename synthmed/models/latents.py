"""Latent-space mechanics of the LDM for large (3D) images: tiled decoding and a latent cache.

- `TiledDecoder` decodes a latent tile by tile with MONAI's `SlidingWindowInferer` (overlapping tiles blended with
  a Gaussian window; the decoder's up-sampling factor is read from the output, MONAI's `zoom_scale`), so the decoder
  never holds a whole large volume's activations at once. This is how MONAI's MAISI decodes its 3D latents. A
  decoder with GroupNorm normalises over each tile instead of the whole volume, so a tiled decode differs from the
  whole decode by a small amount that shrinks with overlap; one tile covering the latent is the plain decode.
- `LatentCache` keeps each training image's latent after its first encoding (keyed by the item's `id`), so the
  frozen encoder runs once per image instead of once per epoch ("encode once, train on latents").

Neither knows about MLflow, files or the LDM's noise process: they take the VAE's `encode` / `decode` callables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer
from torch import Tensor

Codec = Callable[[Tensor], Tensor]
BLEND_MODES = ("gaussian", "constant")


class TiledDecoder:
    """Decode latents `[B, c, *latent]` to images `[B, C, *spatial]` in overlapping tiles of `tile` latent voxels.

    Args:
        tile: latent voxels per tile and axis (`[h, w]` or `[h, w, d]`), or `None` to decode whole latents. A tile
            at least as large as the latent decodes it whole (bit-equal to the plain decode).
        overlap: share of a tile shared with its neighbour along each axis, in [0, 1).
        mode: blending of overlapping tiles: `gaussian` (MONAI's default for smooth seams) or `constant` (mean).
        sw_batch_size: tiles decoded per forward pass (memory vs speed).
    """

    def __init__(self, tile: Sequence[int] | None = None, overlap: float = 0.25, mode: str = "gaussian",
                 sw_batch_size: int = 1) -> None:
        if tile is not None and (len(tile) not in (2, 3) or min(tile) < 1):
            raise ValueError(f"decode_tile must be null or 2-3 positive latent sizes [h, w(, d)], got {list(tile)}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"decode_overlap must be in [0, 1), got {overlap}")
        if mode not in BLEND_MODES:
            raise ValueError(f"decode_blend must be one of {BLEND_MODES}, got '{mode}'")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.tile = tuple(int(t) for t in tile) if tile is not None else None
        self.overlap, self.mode, self.sw_batch_size = overlap, mode, sw_batch_size

    def tiles_needed(self, latent: Sequence[int]) -> bool:
        """Whether a latent of spatial shape `latent` is decoded in more than one tile."""
        if self.tile is None:
            return False
        if len(self.tile) != len(latent):
            raise ValueError(f"decode_tile {list(self.tile)} has {len(self.tile)} axes; the latent "
                             f"{list(latent)} has {len(latent)}")
        return any(t < s for t, s in zip(self.tile, latent))

    def __call__(self, decode: Codec, z: Tensor) -> Tensor:
        """`decode(z)` `[B, c, *latent] -> [B, C, *spatial]`, tile by tile when the latent exceeds the tile."""
        if not self.tiles_needed(z.shape[2:]):
            return decode(z)
        roi = tuple(min(t, s) for t, s in zip(self.tile, z.shape[2:]))
        inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=self.sw_batch_size, overlap=self.overlap,
                                       mode=self.mode, progress=False)
        return inferer(z, decode)


class LatentCache:
    """Latents of training images keyed by item id: each image is encoded once, later epochs read the cache.

    Only valid when an item's image is the same every epoch (no random augmentation; the default data config): a
    cached latent is that of the image as first seen. Latents stay on the device they were computed on.
    """

    def __init__(self) -> None:
        self._store: dict[str, Tensor] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, ids: Sequence[str], images: Tensor, encode: Codec) -> Tensor:
        """Latents `[B, c, *latent]` of `images` `[B, C, *spatial]` whose items are `ids` (length B)."""
        if len(ids) != images.shape[0]:
            raise ValueError(f"latent_cache: {len(ids)} ids for a batch of {images.shape[0]} images")
        new = list(dict.fromkeys(k for k in ids if k not in self._store))  # unique, first-seen order
        if new:
            first = [list(ids).index(k) for k in new]
            with torch.no_grad():
                for key, z in zip(new, encode(images[first])):
                    self._store[key] = z.detach()
        self.misses += len(new)
        self.hits += len(ids) - len(new)
        return torch.stack([self._store[k] for k in ids])
