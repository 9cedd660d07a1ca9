"""What adversarial training shares across families (gan.py, the VAE's optional patch loss in vae.py).

- the losses: hinge (Lim & Ye 2017; Miyato et al. 2018), non-saturating (Goodfellow et al. 2014) and least squares
  (LSGAN, Mao et al. 2017, CycleGAN's choice);
- the R1 gradient penalty on real images (Mescheder et al. 2018), lazily every k steps (Karras et al. 2020);
- DiffAugment (Zhao et al. 2020): the same differentiable augmentations on real and fake images before D;
- `step_uncounted`: the discriminator's optimizer step without advancing `trainer.global_step`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("hinge", "non_saturating", "lsgan")


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got '{loss}'")
    return loss


def d_loss(loss: str, real: Tensor, fake: Tensor) -> Tensor:
    """Discriminator loss from its raw scores on real and fake inputs (any shape; patch maps are averaged)."""
    if loss == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if loss == "lsgan":  # real -> 1, fake -> 0; halved as in CycleGAN so D learns slower than G
        return 0.5 * ((real - 1.0).pow(2).mean() + fake.pow(2).mean())
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def g_loss(loss: str, fake: Tensor) -> Tensor:
    """Generator loss from the discriminator's raw scores on fake inputs."""
    if loss == "lsgan":
        return (fake - 1.0).pow(2).mean()
    return -fake.mean() if loss == "hinge" else F.softplus(-fake).mean()


def r1_penalty(scores: Tensor, inputs: Tensor) -> Tensor:
    """Mean over the batch of `||d D(x) / d x||^2` at the real inputs `x` (which must require grad)."""
    (grad,) = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def step_uncounted(module: pl.LightningModule, optimizer) -> None:
    """Step `optimizer` through the strategy (precision plugin, hooks, clipping) without counting the step.

    Lightning's manual optimization advances `global_step` on every `optimizer.step()`, so a GAN with two
    optimizers would reach `trainer.max_steps` after half the batches. Counting only the generator's (or the
    autoencoder's) step keeps one training step = one batch, as in every other family.
    """
    raw = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer wraps the torch optimizer
    module.trainer.strategy.optimizer_step(raw, closure=lambda: None, model=module)


class DiffAugment:
    """Differentiable augmentation (Zhao et al. 2020, https://arxiv.org/abs/2006.10738) for 2D and 3D batches.

    Applied to real AND fake images before the discriminator (never to what the generator outputs for
    sampling), so D cannot memorise a small training set and the generator is not taught the augmentations.
    Every transform is drawn per image; a strength of 0 switches it off.

    Args:
        translation: max shift per axis as a fraction of the side (0.125 in the paper); vacated voxels get `fill`.
        cutout: side of the erased box as a fraction of the image side (0.5 in the paper), filled with `fill`.
        brightness: max additive shift in [-1, 1] intensity units (0.5 in the paper: U(-0.5, 0.5)).
        contrast: max relative contrast change; the factor is U(1 - c, 1 + c) around each image's mean.
        fill: value of vacated and erased voxels; -1 is the background of medical images in [-1, 1].
    """

    def __init__(self, translation: float = 0.125, cutout: float = 0.5, brightness: float = 0.5,
                 contrast: float = 0.5, fill: float = -1.0) -> None:
        for key, value in dict(translation=translation, cutout=cutout, contrast=contrast).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value}")
        if brightness < 0:
            raise ValueError(f"brightness must be >= 0, got {brightness}")
        self.translation, self.cutout = translation, cutout
        self.brightness, self.contrast, self.fill = brightness, contrast, fill

    def __call__(self, x: Tensor) -> Tensor:
        """Augment `[B, C, *spatial]`; draws from the global RNG (training only)."""
        b, view = x.shape[0], (x.shape[0],) + (1,) * (x.ndim - 1)
        if self.brightness:
            x = x + (torch.rand(view, device=x.device) * 2 - 1).to(x.dtype) * self.brightness
        if self.contrast:
            mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
            x = (x - mean) * (1 + (torch.rand(view, device=x.device) * 2 - 1) * self.contrast).to(x.dtype) + mean
        if self.translation:
            x = self._translate(x, b)
        if self.cutout:
            x = self._cutout(x, b)
        return x

    def _translate(self, x: Tensor, b: int) -> Tensor:
        """Shift each image by an integer offset per axis, filling what moves in with `fill`."""
        for axis in range(2, x.ndim):
            side = x.shape[axis]
            reach = int(side * self.translation + 0.5)
            shift = torch.randint(-reach, reach + 1, (b,), device=x.device)
            src = torch.arange(side, device=x.device)[None, :] - shift[:, None]  # [B, side]: source index
            valid = (src >= 0) & (src < side)
            index = self._along(src.clamp(0, side - 1), axis, x.ndim).expand_as(x)
            x = torch.where(self._along(valid, axis, x.ndim), x.gather(axis, index), x.new_tensor(self.fill))
        return x

    def _cutout(self, x: Tensor, b: int) -> Tensor:
        """Erase one box per image (half the side by default) at a uniform random centre, clipped at the border."""
        inside = torch.ones((b,) + (1,) * (x.ndim - 1), dtype=torch.bool, device=x.device)
        for axis in range(2, x.ndim):
            side = x.shape[axis]
            size = int(side * self.cutout + 0.5)
            start = torch.randint(0, side + 1, (b,), device=x.device)[:, None] - size // 2
            pos = torch.arange(side, device=x.device)[None, :]
            inside = inside & self._along((pos >= start) & (pos < start + size), axis, x.ndim)
        return torch.where(inside, x.new_tensor(self.fill), x)

    @staticmethod
    def _along(t: Tensor, axis: int, ndim: int) -> Tensor:
        """`[B, side]` -> broadcastable `[B, 1, .., side (at axis), .., 1]`."""
        shape: Sequence[int] = [t.shape[0]] + [1] * (ndim - 1)
        shape[axis] = t.shape[1]
        return t.view(shape)
