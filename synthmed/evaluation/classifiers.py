"""Downstream classifiers of the utility harness (`conf/classifier/`): a small CNN and a linear probe.

A classifier splits into a fixed `embed` (identity for the CNN; a frozen in-domain encoder for the probe) and a
trainable `head` that maps embeddings to one rare-class logit. The harness embeds un-augmented training sets once,
so a probe trains in a fraction of a second; augmented batches are embedded per step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
from monai.networks.nets import Classifier as MonaiClassifier
from torch import Tensor, nn

from synthmed.metrics.domain import EncoderBank, EncoderSettings


class UtilityClassifier(ABC):
    """What every regime trains: the same steps, batch size and optimizer (AdamW) for every regime.

    Args:
        steps: optimizer steps per training.
        batch_size: images per step, drawn with replacement from the regime's training set.
        lr: AdamW learning rate (constant).
        weight_decay: AdamW weight decay.
        eval_every: steps between validation losses; the weights with the lowest one are kept (model selection on
            the real validation split, the same for every regime).
        name: shown in the report.
    """

    def __init__(self, steps: int = 300, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4,
                 eval_every: int = 50, name: str = "") -> None:
        self.name = name or type(self).__name__
        for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
            if int(value) < 1:
                raise ValueError(f"classifier.{name} must be >= 1, got {value}")
        if lr <= 0:
            raise ValueError(f"classifier.lr must be > 0, got {lr}")
        self.steps, self.batch_size, self.lr = int(steps), int(batch_size), float(lr)
        self.weight_decay, self.eval_every = float(weight_decay), int(eval_every)

    def prepare(self, train: Tensor, cond: Mapping[str, Tensor] | None = None, fingerprint: str | None = None) -> None:
        """Fit what stays frozen, once per data set, from the full real training split ``[N, C, *spatial]`` (its
        covariates, never its labels: the label must be learned from each regime's own training set)."""
        return None  # default: nothing frozen (an end-to-end network)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Images ``[N, C, *spatial]`` -> the head's inputs ``[N, ...]``."""
        return images

    @abstractmethod
    def head(self, example: Tensor) -> nn.Module:
        """A fresh trainable head for inputs shaped like ``example`` ``[C, *spatial]`` (or ``[F]``), output
        ``[B, 1]`` logits; initialized from the caller's (seeded) global RNG."""


class CNNClassifier(UtilityClassifier):
    """MONAI's residual `Classifier` (2D and 3D from the input shape), trained end to end.

    Args:
        channels: channels per stage.
        strides: stride per stage (2 halves the resolution).
        num_res_units: residual units per stage.
        **kwargs: `UtilityClassifier` training settings.
    """

    def __init__(self, channels: Sequence[int] = (8, 16, 32), strides: Sequence[int] = (2, 2, 2),
                 num_res_units: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"classifier.channels and classifier.strides need one entry per stage, got "
                             f"{list(channels)} and {list(strides)}")
        self.channels, self.strides, self.num_res_units = list(channels), list(strides), int(num_res_units)

    def head(self, example: Tensor) -> nn.Module:
        return MonaiClassifier(in_shape=list(example.shape), classes=1, channels=self.channels, strides=self.strides,
                               num_res_units=self.num_res_units, norm="BATCH")


class LinearProbe(UtilityClassifier):
    """Logistic regression on the pooled features (channel means, standard deviations and maxima of every stage) of
    the in-domain encoder (metrics/domain.py), trained once, self-supervised plus the sex and age heads, on the real
    training split and then frozen: the probe measures what each regime's images teach a linear read-out.

    Args:
        encoder_channels: channels per encoder stage.
        encoder_steps: encoder training steps (cached by data content under ``cache_dir``).
        cache_dir: where trained encoders are kept (None: trained once per process).
        **kwargs: `UtilityClassifier` training settings.
    """

    def __init__(self, encoder_channels: Sequence[int] = (8, 16, 32), encoder_steps: int = 400,
                 cache_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        settings = EncoderSettings(channels=tuple(encoder_channels), steps=int(encoder_steps))
        self.bank = EncoderBank(settings, cache_dir)
        self.encoder: nn.Module | None = None
        self.mean, self.std = torch.zeros(0), torch.ones(0)  # feature standardization, set by prepare()

    def prepare(self, train: Tensor, cond: Mapping[str, Tensor] | None = None, fingerprint: str | None = None) -> None:
        cond = {k: v for k, v in (cond or {}).items() if k != "label"}  # label-free: see UtilityClassifier.prepare
        self.encoder = self.bank.get("domain", train, cond, fingerprint).net.eval()
        self.mean, self.std = torch.zeros(0), torch.ones(0)
        feats = self.embed(train)
        self.mean, self.std = feats.mean(0), feats.std(0).clamp_min(1e-6)

    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int = 256) -> Tensor:
        if self.encoder is None:
            raise RuntimeError("LinearProbe.prepare() must run before embed()")
        feats = torch.cat([self.encoder.pooled(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
        return (feats - self.mean) / self.std if self.mean.numel() else feats

    def head(self, example: Tensor) -> nn.Module:
        return nn.Linear(example.numel(), 1)
