"""GenerativeModule: the LightningModule every model family subclasses (DESIGN.md, "GenerativeModule").

What lives here so that no family repeats it:
- the optimizer comes from a `_partial_` config (`torch.optim.AdamW` with its lr, ...);
- EMA of the sampling network, switched on by `ema_decay` in config (`torch.optim.swa_utils.AveragedModel`);
- per-sample noise: sample *i* depends only on the seed drawn from the caller's generator and on *i*, never on the
  batch size or the device count, so grids and FID are the same on one GPU or eight;
- `load_weights`: checkpoints are read with `torch.load(weights_only=True)` and nothing else.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torchmetrics import Metric

if TYPE_CHECKING:  # conditioning.py builds on this module
    from synthmed.models.conditioning import Conditioning

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# Seeds for per-sample generators are drawn below 2**62 so that `base + i` never overflows int64.
_SEED_RANGE = 2**62


def ema_multi_avg_fn(decay: float) -> Callable:
    """EMA update with warm-up: the effective decay is min(decay, (1 + n) / (10 + n)) after n updates.

    Without the warm-up a 0.999 EMA of a short (CPU-sized) run is mostly the random initialisation.
    """

    @torch.no_grad()
    def update(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor | int) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return update


class WeightedMean(Metric):
    """Mean of per-batch means weighted by their image counts, summed as floats across DDP ranks; NaN stays NaN.

    Not torchmetrics' MeanMetric: it drops NaN values by default (a diverged run would read as finite), and with
    `nan_strategy="disable"` it resets the weights to ones (torchmetrics 1.9), i.e. weights every batch alike.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: Tensor, n: int) -> None:
        self.total += value.detach().double() * n
        self.count += n

    def compute(self) -> Tensor:
        return (self.total / self.count).float()


class _EMAUpdate(pl.Callback):
    """Updates the module's EMA at the end of every training batch (see `GenerativeModule.configure_callbacks`)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.update_ema()


class GenerativeModule(pl.LightningModule, ABC):
    """Base class of every generative family.

    Subclasses build their networks, call `self.init_ema(net)` with the network that `sample()` runs, and
    implement `training_step` and `generate(noise, cond)`.

    Args:
        name: the model config's name (`ddpm`, `gan`, ...): part of the MLflow run name.
        image_shape: shape of one image, `[C, H, W]` or `[C, H, W, D]`.
        optimizer: a partial optimizer (`_partial_: true` in config) called with the trainable parameters.
        ema_decay: EMA decay of the sampling network per step; `None` or 0 disables EMA.
        sample_batch_size: images generated per forward pass in `sample()` (memory only; results do not depend on it).
        grad_clip_norm: clip the global gradient L2 norm to this value before each step (`None` = off).
    """

    family: str = "base"  # diffusion | gan | vae | ...: the `synthmed.model_family` tag

    # ---- capabilities: what callers may ask of a model. Declared here with defaults, overridden by the families
    # that have them; entry points and callbacks read these, never probe with getattr/hasattr/isinstance.
    requires_source: bool = False  # sample() maps cond["source"] [n, C_src, *spatial] (translators: translator.py)
    uses_noise: bool = True  # False: the output is a function of the condition alone; other seeds change nothing
    supports_guidance: bool = False  # a classifier-free guidance weight can be set for sampling (GuidedDenoising)
    conditioning: Conditioning | None = None  # what sample(cond=...) accepts; None or disabled = unconditional
    # ---- settings for tests, kept with the model so that adding a family edits no central test table
    test_overrides: tuple[str, ...] = ()  # config overrides that only make the contract test faster
    first_stage_model: str | None = None  # conf/model/<name>.yaml of the frozen first stage this model is built on

    def __init__(self, name: str, image_shape: Sequence[int], optimizer: OptimizerFactory,
                 ema_decay: float | None = None, sample_batch_size: int = 16,
                 grad_clip_norm: float | None = None) -> None:
        super().__init__()
        if len(image_shape) not in (3, 4):
            raise ValueError(f"image_shape must be [C, H, W] or [C, H, W, D], got {list(image_shape)}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if sample_batch_size < 1:
            raise ValueError(f"sample_batch_size must be >= 1, got {sample_batch_size}")
        self.name = name
        self.image_shape = tuple(int(s) for s in image_shape)
        self.optimizer_factory = optimizer
        self.ema_decay = ema_decay or 0.0
        self.sample_batch_size = sample_batch_size
        self.grad_clip_norm = grad_clip_norm
        self.ema: AveragedModel | None = None
        self.val_means = nn.ModuleDict()  # metric key -> WeightedMean (no persistent state: checkpoints unchanged)

    def log_val_means(self, values: dict[str, Tensor | float], n: int) -> None:
        """Log validation means over every image scored on every rank, each image once.

        Each key accumulates `value * n` and `n` as floats in a `WeightedMean`, summed across DDP ranks at
        the end of the evaluation. (Lightning's own `sync_dist` mean averages the integer image count per rank and
        truncates it: 3 + 2 images on 2 gloo ranks count as 2 per rank, not 2.5, and the mean is off by 25 %.)

        Args:
            values: metric key (names.py) -> this batch's mean (a scalar).
            n: images in this batch on this rank.
        """
        for key, value in values.items():
            slot = key.replace("/", "__").replace(".", "_")  # ModuleDict keys may not hold '.'
            if slot not in self.val_means:
                self.val_means[slot] = WeightedMean().to(self.device)
            metric = self.val_means[slot]
            metric.update(torch.as_tensor(value, device=self.device), n)
            self.log(key, metric, on_step=False, on_epoch=True, metric_attribute=f"val_means.{slot}")

    @property
    def spatial_dims(self) -> int:
        return len(self.image_shape) - 1

    @property
    def is_conditional(self) -> bool:
        """True when sample() generates on request (labels and/or covariates in `cond`)."""
        return self.conditioning is not None and self.conditioning.enabled

    # ---- EMA -------------------------------------------------------------------------------------------------
    def init_ema(self, net: nn.Module) -> None:
        """Track an EMA copy of `net` (the network `sample()` uses) when `ema_decay` > 0."""
        self._ema_source = [net]  # a list, so Lightning does not register `net` twice
        if self.ema_decay > 0:
            self.ema = AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(self.ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)

    def sampling_net(self) -> nn.Module:
        """The EMA network when EMA is on, else the trained one."""
        return self.ema.module if self.ema is not None else self._ema_source[0]

    def configure_callbacks(self) -> list[pl.Callback]:
        """The EMA update, as a callback: Lightning runs every callback's `on_train_batch_end` before the module's
        own and moves checkpoint callbacks last, so a step checkpoint holds the EMA of the step it is named after
        (updated in the module's hook, it was one update behind and a resume from it was not exact)."""
        return [_EMAUpdate()] if self.ema is not None else []

    def update_ema(self) -> None:
        """One EMA step towards the trained network (after each optimizer step)."""
        if self.ema is not None:
            self.ema.update_parameters(self._ema_source[0])

    def load_first_stage(self, state_dict: dict[str, Tensor]) -> None:
        """Load the trained weights of the frozen first stage (families with `first_stage_model` set override it)."""
        raise TypeError(f"{type(self).__name__} is not built on a first stage (first_stage_model is None)")

    def compile_networks(self) -> list[str]:
        """`torch.compile` every network in place (`Module.compile`), so state-dict keys and checkpoints stay the
        same as without it. Returns the compiled attribute names."""
        compiled = []
        for name, child in self.named_children():
            if child is not self.ema and any(True for _ in child.parameters()):
                child.compile()
                compiled.append(name)
        return compiled

    # ---- optimisation ----------------------------------------------------------------------------------------
    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the optimizer updates (EMA copies excluded)."""
        ema_ids = {id(p) for p in self.ema.parameters()} if self.ema is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in ema_ids]

    def configure_optimizers(self):
        return self.optimizer_factory(self.trainable_parameters())

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Clipping is a model setting (conf/model/*.yaml), not a Trainer one: Lightning refuses Trainer-level
        # clipping under manual optimization (GANs), and the same key should work for every family.
        clip = gradient_clip_val if gradient_clip_val is not None else self.grad_clip_norm
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def on_before_optimizer_step(self, optimizer) -> None:
        # Manual optimization (GAN, pix2pix, adversarial VAE): Lightning does not clip, so the families' clipping
        # happens here, where gradients are already unscaled under AMP. Automatic optimization clips by itself.
        if not self.automatic_optimization:
            self.configure_gradient_clipping(optimizer)

    # ---- sampling --------------------------------------------------------------------------------------------
    @staticmethod
    def per_sample_generators(n: int, generator: torch.Generator | None = None,
                              offset: int = 0) -> list[torch.Generator]:
        """One CPU generator per sample, seeded `base + offset + i`.

        `base` is drawn once from `generator` (or the global RNG), so the same generator state gives the same
        samples whatever the batch size or the number of devices that split the n rows.
        """
        base = int(torch.randint(_SEED_RANGE, (1,), generator=generator))
        return [torch.Generator().manual_seed(base + offset + i) for i in range(n)]

    def noise_shape(self) -> tuple[int, ...]:
        """Shape of the per-sample noise `generate()` starts from (the image shape unless a family says otherwise)."""
        return self.image_shape

    @abstractmethod
    def generate(self, noise: Tensor, cond: dict | None = None,
                 generators: list[torch.Generator] | None = None) -> Tensor:
        """Map noise `[B, *noise_shape]` to images `[B, *image_shape]` in [-1, 1]. Families implement this.

        `generators[i]` is row i's own generator for any further randomness (e.g. ancestral sampling steps).
        """

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, cond: dict | None = None,
               offset: int = 0) -> Tensor:
        """Draw n images `[n, *image_shape]` in [-1, 1], deterministic for a given generator state.

        Args:
            n: number of images.
            generator: CPU generator the base seed is drawn from; `None` uses the global RNG.
            cond: optional conditioning, each value with a leading dimension n.
            offset: index of the first sample, so that shards of one request (DDP ranks) stay consistent.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        gens = self.per_sample_generators(n, generator, offset)
        noise = torch.stack([torch.randn(self.noise_shape(), generator=g) for g in gens]).to(self.device)
        was_training = self.training
        self.eval()
        try:
            chunks = []
            for start in range(0, n, self.sample_batch_size):
                part = slice(start, start + self.sample_batch_size)
                sub = {k: v[part] for k, v in cond.items()} if cond else None
                chunks.append(self.generate(noise[part], sub, gens[part]).float().clamp(-1.0, 1.0))
        finally:
            self.train(was_training)
        return torch.cat(chunks)


def state_digest(state: dict[str, Tensor]) -> str:
    """SHA-256 over a state dict's keys, shapes, dtypes and bytes (sorted keys): the identity of a set of weights,
    independent of the file, optimizer state or training loop state around it."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if isinstance(value, Tensor):
            digest.update(f"{key}|{tuple(value.shape)}|{value.dtype}".encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_weights(module: nn.Module, checkpoint: str | Path, strict: bool = True) -> dict:
    """Load a Lightning checkpoint's `state_dict` into `module` with `weights_only=True`; returns the checkpoint."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint: it has no 'state_dict' (keys: {sorted(ckpt)})")
    module.load_state_dict(ckpt["state_dict"], strict=strict)
    return ckpt
