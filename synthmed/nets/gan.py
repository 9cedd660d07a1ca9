"""Residual GAN backbones (SNGAN/BigGAN style), 2D and 3D through `spatial_dims`.

The networks know nothing about losses, regularizers or augmentation; synthmed/models/gan.py owns those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def _check_channels(channels: Sequence[int], name: str = "channels") -> None:
    if len(channels) < 1 or any(int(c) < 1 for c in channels):
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {list(channels)}")


def conv(spatial_dims: int, cin: int, cout: int, kernel: int = 3, sn: bool = False) -> nn.Module:
    """A same-padded Conv2d/Conv3d, spectrally normalised when `sn`."""
    layer = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(cin, cout, kernel, padding=kernel // 2)
    return _sn(layer) if sn else layer


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _down(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2) if x.ndim == 4 else F.avg_pool3d(x, 2)


class GeneratorBlock(nn.Module):
    """Pre-activation residual up-block: GN-ReLU-up-conv-GN-ReLU-conv, plus an up-sampled 1x1 shortcut.

    GroupNorm instead of BigGAN's BatchNorm: a sample must not depend on the others in its batch.
    """

    def __init__(self, spatial_dims: int, cin: int, cout: int, groups: int, sn: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(groups, cin), nn.GroupNorm(groups, cout)
        self.conv1, self.conv2 = conv(spatial_dims, cin, cout, sn=sn), conv(spatial_dims, cout, cout, sn=sn)
        self.skip = conv(spatial_dims, cin, cout, kernel=1, sn=sn)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_up(F.relu(self.norm1(x))))
        h = self.conv2(F.relu(self.norm2(h)))
        return h + self.skip(_up(x))


class DiscriminatorBlock(nn.Module):
    """Residual down-block: [ReLU]-conv-ReLU-conv-avgpool plus a 1x1-conv-avgpool shortcut (spectral norm).

    The first block of the network skips the leading ReLU (its input is the image), as in Miyato et al. 2018.
    """

    def __init__(self, spatial_dims: int, cin: int, cout: int, sn: bool, first: bool) -> None:
        super().__init__()
        self.first = first
        self.conv1, self.conv2 = conv(spatial_dims, cin, cout, sn=sn), conv(spatial_dims, cout, cout, sn=sn)
        self.skip = conv(spatial_dims, cin, cout, kernel=1, sn=sn)

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        return _down(h) + self.skip(_down(x))


class ResNetGenerator(nn.Module):
    """Residual generator of SNGAN (Miyato et al. 2018, https://arxiv.org/abs/1802.05957) and BigGAN
    (Brock et al. 2019, https://arxiv.org/abs/1809.11096): a linear map of z to the coarsest grid, then
    `len(channels) - 1` residual up-sampling blocks and a tanh output in [-1, 1].

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        out_channels: image channels.
        spatial_size: output size per spatial axis (an int for a square/cube); each side must be divisible by
            `2 ** (len(channels) - 1)`.
        latent_dim: length of the noise vector z.
        channels: feature maps per resolution, coarsest first.
        norm_num_groups: GroupNorm groups; must divide every entry of `channels`.
        spectral_norm: spectrally normalise the convolutions too (SAGAN); off by default, the discriminator is
            what needs the Lipschitz bound.
    """

    def __init__(self, spatial_dims: int, out_channels: int, spatial_size: int | Sequence[int],
                 latent_dim: int = 128, channels: Sequence[int] = (256, 128, 64), norm_num_groups: int = 8,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        _check_channels(channels)
        size = [int(spatial_size)] * spatial_dims if isinstance(spatial_size, int) else [int(s) for s in spatial_size]
        factor = 2 ** (len(channels) - 1)
        if len(size) != spatial_dims or any(s < factor or s % factor for s in size):
            raise ValueError(f"spatial_size must give {spatial_dims} sides divisible by 2**(len(channels)-1)="
                             f"{factor}, got {spatial_size}")
        if out_channels < 1 or latent_dim < 1:
            raise ValueError(f"out_channels and latent_dim must be >= 1, got {out_channels}, {latent_dim}")
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every entry of channels={list(channels)}")
        self.latent_dim = latent_dim
        self.output_shape = (out_channels, *size)
        self.base_shape = (channels[0], *(s // factor for s in size))
        self.fc = nn.Linear(latent_dim, math.prod(self.base_shape))
        self.blocks = nn.Sequential(*[GeneratorBlock(spatial_dims, a, b, norm_num_groups, spectral_norm)
                                      for a, b in zip(channels[:-1], channels[1:])])
        self.out = nn.Sequential(nn.GroupNorm(norm_num_groups, channels[-1]), nn.ReLU(),
                                 conv(spatial_dims, channels[-1], out_channels, sn=spectral_norm), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        """Noise `[B, latent_dim]` -> images `[B, C, *spatial]` in [-1, 1]."""
        return self.out(self.blocks(self.fc(z).view(z.shape[0], *self.base_shape)))


class ResNetDiscriminator(nn.Module):
    """Residual discriminator with spectral norm (Miyato et al. 2018, https://arxiv.org/abs/1802.05957):
    `len(channels)` down-sampling blocks, ReLU, global sum pooling and a linear score per image.

    Sum pooling works for any input size, so one discriminator serves 2D slices and 3D volumes of any shape
    whose sides are divisible by `2 ** len(channels)`.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: image channels.
        channels: feature maps per block, finest first.
        spectral_norm: spectrally normalise every layer (the 1-Lipschitz bound that makes hinge GANs stable).
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int] = (64, 128, 256),
                 spectral_norm: bool = True) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        _check_channels(channels)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        widths = [in_channels, *channels]
        self.blocks = nn.Sequential(*[DiscriminatorBlock(spatial_dims, a, b, spectral_norm, first=i == 0)
                                      for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))])
        linear = nn.Linear(channels[-1], 1)
        self.linear = _sn(linear) if spectral_norm else linear

    def forward(self, x: Tensor) -> Tensor:
        """Images `[B, C, *spatial]` -> unbounded realness scores `[B]`."""
        h = F.relu(self.blocks(x)).flatten(2).sum(-1)
        return self.linear(h).squeeze(-1)
