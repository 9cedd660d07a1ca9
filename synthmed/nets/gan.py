"""Residual GAN backbones (SNGAN/BigGAN style), 2D and 3D through `spatial_dims`, optionally conditional.

The networks know nothing about losses, regularizers or augmentation; synthmed/models/gan.py owns those. A
condition reaches them as a vector `c [B, cond_dim]` (one-hot label and scaled covariates, built by
synthmed/models/conditioning.py): the generator through conditional normalization, the discriminator through a
projection (Miyato & Koyama 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
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


class ConditionalGroupNorm(nn.GroupNorm):
    """GroupNorm whose per-channel gain and bias also depend on a condition vector: the conditional batch norm of
    de Vries et al. 2017 (https://arxiv.org/abs/1707.00683) as used in BigGAN, with GroupNorm so that a sample never
    depends on its batch. The condition's map starts at zero, so a fresh conditional block equals an unconditional
    one; with `cond_dim=0` this is a plain GroupNorm (same state-dict keys).
    """

    def __init__(self, groups: int, channels: int, cond_dim: int = 0) -> None:
        super().__init__(groups, channels)
        self.film = nn.Linear(cond_dim, 2 * channels) if cond_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """`x [B, C, *spatial]`, `c [B, cond_dim]` (required when conditional) -> `[B, C, *spatial]`."""
        h = super().forward(x)
        if self.film is None:
            return h
        gain, bias = self.film(c).view(x.shape[0], 2, x.shape[1], *(1,) * (x.ndim - 2)).unbind(1)
        return h * (1 + gain) + bias


class GeneratorBlock(nn.Module):
    """Pre-activation residual up-block: GN-ReLU-up-conv-GN-ReLU-conv, plus an up-sampled 1x1 shortcut.

    GroupNorm instead of BigGAN's BatchNorm: a sample must not depend on the others in its batch. Both norms are
    conditional when `cond_dim > 0`.
    """

    def __init__(self, spatial_dims: int, cin: int, cout: int, groups: int, sn: bool, cond_dim: int = 0) -> None:
        super().__init__()
        self.norm1 = ConditionalGroupNorm(groups, cin, cond_dim)
        self.norm2 = ConditionalGroupNorm(groups, cout, cond_dim)
        self.conv1, self.conv2 = conv(spatial_dims, cin, cout, sn=sn), conv(spatial_dims, cout, cout, sn=sn)
        self.skip = conv(spatial_dims, cin, cout, kernel=1, sn=sn)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.conv1(_up(F.relu(self.norm1(x, c))))
        h = self.conv2(F.relu(self.norm2(h, c)))
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

    Conditional (`cond_dim > 0`) as in BigGAN: the condition joins z at the input and sets the gains and biases of
    every block's normalization.

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
        cond_dim: length of the condition vector; 0 for an unconditional generator.
    """

    def __init__(self, spatial_dims: int, out_channels: int, spatial_size: int | Sequence[int],
                 latent_dim: int = 128, channels: Sequence[int] = (256, 128, 64), norm_num_groups: int = 8,
                 spectral_norm: bool = False, cond_dim: int = 0) -> None:
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
        _check_cond_dim(cond_dim)
        if any(c % norm_num_groups for c in channels):
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every entry of channels={list(channels)}")
        self.latent_dim, self.cond_dim = latent_dim, int(cond_dim)
        self.output_shape = (out_channels, *size)
        self.base_shape = (channels[0], *(s // factor for s in size))
        self.fc = nn.Linear(latent_dim + self.cond_dim, math.prod(self.base_shape))
        self.blocks = nn.ModuleList(GeneratorBlock(spatial_dims, a, b, norm_num_groups, spectral_norm, self.cond_dim)
                                    for a, b in zip(channels[:-1], channels[1:]))
        self.out = nn.Sequential(nn.GroupNorm(norm_num_groups, channels[-1]), nn.ReLU(),
                                 conv(spatial_dims, channels[-1], out_channels, sn=spectral_norm), nn.Tanh())

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Noise `[B, latent_dim]` (and condition `c [B, cond_dim]` when conditional) -> images `[B, C, *spatial]`
        in [-1, 1]."""
        c = _check_condition(c, self.cond_dim, z.shape[0])
        h = self.fc(z if c is None else torch.cat([z, c], dim=1)).view(z.shape[0], *self.base_shape)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)


class ResNetDiscriminator(nn.Module):
    """Residual discriminator with spectral norm (Miyato et al. 2018, https://arxiv.org/abs/1802.05957):
    `len(channels)` down-sampling blocks, ReLU, global sum pooling and a linear score per image.

    Conditional (`cond_dim > 0`) with the projection of Miyato & Koyama 2018 (https://arxiv.org/abs/1802.05637):
    the score gains `<E c, h>`, the pooled features `h` against a learned embedding of the condition. For a one-hot
    label `E c` is the class embedding of the paper; scaled covariates enter the same inner product linearly.

    Sum pooling works for any input size, so one discriminator serves 2D slices and 3D volumes of any shape
    whose sides are divisible by `2 ** len(channels)`.

    Args:
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: image channels.
        channels: feature maps per block, finest first.
        spectral_norm: spectrally normalise every layer (the 1-Lipschitz bound that makes hinge GANs stable).
        cond_dim: length of the condition vector; 0 for an unconditional discriminator.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int] = (64, 128, 256),
                 spectral_norm: bool = True, cond_dim: int = 0) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        _check_channels(channels)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        _check_cond_dim(cond_dim)
        self.cond_dim = int(cond_dim)
        widths = [in_channels, *channels]
        self.blocks = nn.Sequential(*[DiscriminatorBlock(spatial_dims, a, b, spectral_norm, first=i == 0)
                                      for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))])
        linear = nn.Linear(channels[-1], 1)
        self.linear = _sn(linear) if spectral_norm else linear
        embed = nn.Linear(self.cond_dim, channels[-1], bias=False) if self.cond_dim else None
        self.embed = _sn(embed) if embed is not None and spectral_norm else embed

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Images `[B, C, *spatial]` (and condition `c [B, cond_dim]` when conditional) -> unbounded realness
        scores `[B]`."""
        c = _check_condition(c, self.cond_dim, x.shape[0])
        h = F.relu(self.blocks(x)).flatten(2).sum(-1)
        score = self.linear(h).squeeze(-1)
        return score if c is None else score + (self.embed(c) * h).sum(-1)


def _check_cond_dim(cond_dim: int) -> None:
    if int(cond_dim) < 0:
        raise ValueError(f"cond_dim must be >= 0, got {cond_dim}")


def _check_condition(c: Tensor | None, cond_dim: int, batch: int) -> Tensor | None:
    """`c` checked against the network's `cond_dim`: required with the right shape when conditional, else None."""
    if not cond_dim:
        if c is not None:
            raise ValueError("this network is unconditional (cond_dim=0) but was given a condition")
        return None
    if c is None or tuple(c.shape) != (batch, cond_dim):
        got = None if c is None else list(c.shape)
        raise ValueError(f"this network is conditional: expected c of shape [{batch}, {cond_dim}], got {got}")
    return c
