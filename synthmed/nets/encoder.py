"""A small convolutional encoder with pooled features, task heads and a thumbnail decoder; 2D and 3D.

The in-domain Frechet distance (``val/fd_domain``) reads its pooled features and the conditioning metrics read its
task heads (label, sex, age); synthmed/metrics/domain.py trains and caches it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


def _block(spatial_dims: int, cin: int, cout: int, stride: int) -> nn.Sequential:
    """conv(stride)-BN-ReLU-conv-BN-ReLU.

    BatchNorm, not GroupNorm: with a group per one or two channels GroupNorm acts as an instance norm, and in our
    phantom runs (64 px) the lesion classifier then stayed near chance on held-out images (balanced accuracy
    0.5-0.6) where BatchNorm's reached 0.94. The encoder is only read in eval mode, where BatchNorm uses its running
    statistics: a sample's outputs never depend on its batch.
    """
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if spatial_dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
    return nn.Sequential(conv(cin, cout, 3, stride=stride, padding=1), norm(cout), nn.ReLU(),
                         conv(cout, cout, 3, padding=1), norm(cout), nn.ReLU())


class DomainEncoder(nn.Module):
    """Conv encoder whose features are the channel means and standard deviations of every stage.

    Multi-scale statistics, as in perceptual metrics (Zhang et al., "The Unreasonable Effectiveness of Deep Features
    as a Perceptual Metric", CVPR 2018) and style statistics (Huang & Belongie, "Arbitrary Style Transfer in
    Real-time with Adaptive Instance Normalization", ICCV 2017): the first stage sees noise and blur, the last one
    anatomy. The features are standardized by buffers that the trainer sets to their training-set mean and std
    (identity until then), so that no dimension outweighs the others in a Frechet distance by its scale alone.
    The ``thumbnail`` output (one conv on the bottleneck) estimates the image at the bottleneck's resolution, for
    an autoencoder task at a fraction of a full decoder's cost. The heads read the means, standard deviations and
    maxima of every stage: a focal lesion is a small local maximum that a mean dilutes.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        channels: channels per stage; every stage but (optionally) the first halves the resolution.
        heads: head name -> outputs (classes of a categorical target, 1 for a regression).
        first_stride: stride of the first stage; 1 keeps full resolution there, for findings a pixel or two wide.
    """

    def __init__(self, spatial_dims: int, in_channels: int = 1, channels: Sequence[int] = (8, 16, 32),
                 heads: Mapping[str, int] | None = None, first_stride: int = 2) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if len(channels) < 1 or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {list(channels)}")
        heads = dict(heads or {})
        if any(int(k) < 1 for k in heads.values()):
            raise ValueError(f"heads must map names to output counts >= 1, got {heads}")
        if first_stride not in (1, 2):
            raise ValueError(f"first_stride must be 1 or 2, got {first_stride}")
        self.spatial_dims, self.channels = spatial_dims, [int(c) for c in channels]
        widths = [in_channels, *self.channels]
        strides = [first_stride] + [2] * (len(self.channels) - 1)
        self.stages = nn.ModuleList(_block(spatial_dims, cin, cout, stride)
                                    for cin, cout, stride in zip(widths, widths[1:], strides))
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.thumbnail = conv(self.channels[-1], in_channels, 3, padding=1)
        self.heads = nn.ModuleDict({k: nn.Linear(3 * sum(self.channels), int(v)) for k, v in heads.items()})
        self.register_buffer("feature_mean", torch.zeros(self.feature_dims))
        self.register_buffer("feature_std", torch.ones(self.feature_dims))

    @property
    def feature_dims(self) -> int:
        return 2 * sum(self.channels)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Outputs for images ``x`` ``[B, C, *spatial]``.

        Returns:
            ``features`` ``[B, 2 * sum(channels)]``; one ``[B, outputs]`` per head; ``thumbnail`` ``[B, C, *spatial']``,
            the image estimated at the bottleneck's resolution (``spatial' = spatial / total stride``).
        """
        maps = self._maps(x)
        pooled = self._pool(maps)
        out = {name: head(pooled) for name, head in self.heads.items()}
        out["features"] = (pooled[:, :self.feature_dims] - self.feature_mean) / self.feature_std
        out["thumbnail"] = self.thumbnail(maps[-1])
        return out

    def pooled(self, x: Tensor) -> Tensor:
        """What the heads read: channel means, standard deviations and maxima of every stage, ``[B, 3 *
        sum(channels)]`` (the downstream linear probe of synthmed utility reads the same)."""
        return self._pool(self._maps(x))

    def _maps(self, x: Tensor) -> list[Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    @staticmethod
    def _pool(maps: list[Tensor]) -> Tensor:
        flat = [m.flatten(2) for m in maps]
        return torch.cat([m.mean(-1) for m in flat] + [m.std(-1, correction=0) for m in flat]
                         + [m.amax(-1) for m in flat], dim=1)
