"""Lesion preservation of a translator: does it keep the lesions of its input, and does it invent new ones?

A distribution-matching translator (CycleGAN) trained where the two domains have different disease mixes learns to
add or remove findings to match the target's mix (Cohen et al., MICCAI 2018). Two rates expose it, read by a lesion
reader trained on the *target* domain (the `label` encoder of synthmed.metrics.domain, trained on real target-domain
images and their lesion labels):

- `val/lesion_preserved_rate`: share of inputs with a lesion whose translation the reader reads as a lesion;
- `val/lesion_appeared_rate`: share of inputs without a lesion whose translation the reader reads as a lesion.

The reader is not perfect, so the same two rates on the real paired targets (`..._real`: its sensitivity and its
false-positive rate) are the reference a translator's values are read against, where paired truth exists. Every
rate comes with its n and a Wilson 95 % interval.

A reader may look through a display window (`window`, native units): on CT a 20 HU lesion is 1 % of the
[-1000, 1000] HU range, and a reader trained on the full range read phantom lesions near chance (32 px: sensitivity
0.81, specificity 0.18), through the brain window [0, 80] HU at 0.92 / 0.92 (radii 0.1-0.15, 300 steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from statsmodels.stats.proportion import proportion_confint
from torch import Tensor

from synthmed.metrics import names
from synthmed.metrics.domain import DomainModel, EncoderBank
from synthmed.metrics.translation import to_native

BRAIN_WINDOW_HU = (0.0, 80.0)  # the radiologists' head-CT brain window (level 40, width 80)


def reading_view(x: Tensor, intensity: dict, window: Sequence[float] | None) -> Tensor:
    """Images `[N, C, *spatial]` in [-1, 1] as the reader sees them: the native range `window` (lo, hi) stretched to
    [-1, 1] and clipped; None: unchanged."""
    if window is None:
        return x
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must be [lo, hi] with hi > lo (native units), got {list(window)}")
    return ((to_native(x, intensity) - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)


def lesion_reader(bank: EncoderBank, images: Tensor, labels: Tensor, intensity: dict,
                  window: Sequence[float] | None = None, fingerprint: str | None = None) -> DomainModel:
    """The target-domain lesion reader: the bank's `label` encoder trained on real target images `[N, C, *spatial]`
    and their lesion labels `[N]` (0 = none), seen through `window`."""
    if len(images) != len(labels):
        raise ValueError(f"images and labels: one label per image expected, got {len(images)} and {len(labels)}")
    if int(torch.as_tensor(labels).gt(0).sum()) == 0:
        raise ValueError("the lesion reader needs target-domain training images with a lesion (label > 0); none has")
    return bank.get("label", reading_view(images, intensity, window), {"label": torch.as_tensor(labels)},
                    fingerprint)


@dataclass(frozen=True)
class Rate:
    """A share with its count and Wilson 95 % interval (NaN when n = 0)."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def ci(self) -> tuple[float, float]:
        if not self.n:
            return float("nan"), float("nan")
        low, high = proportion_confint(self.k, self.n, alpha=0.05, method="wilson")
        return float(low), float(high)


@dataclass(frozen=True)
class LesionRates:
    """Preserved (`P(read lesion | input lesion)`) and appeared (`P(read lesion | no input lesion)`) rates."""

    preserved: Rate
    appeared: Rate

    def metrics(self, suffix=lambda key: key) -> dict[str, float]:
        """The metric keys of names.py (optionally renamed, e.g. `names.on_real`) -> values, n included."""
        return {suffix(names.LESION_PRESERVED_RATE): self.preserved.value,
                suffix(names.LESION_APPEARED_RATE): self.appeared.value,
                suffix(names.LESION_N_POSITIVE): float(self.preserved.n),
                suffix(names.LESION_N_NEGATIVE): float(self.appeared.n)}


def read_lesions(reader: DomainModel, images: Tensor, intensity: dict,
                 window: Sequence[float] | None = None) -> Tensor:
    """Bool `[N]`: the reader reads a lesion (class > 0) in images `[N, C, *spatial]` in [-1, 1]."""
    return reader.outputs(reading_view(images, intensity, window))["label"] > 0


def lesion_rates(reader: DomainModel, outputs: Tensor, input_labels: Tensor, intensity: dict,
                 window: Sequence[float] | None = None) -> LesionRates:
    """Lesion preservation of translations `outputs` `[N, C, *spatial]` of inputs whose lesion labels are
    `input_labels` `[N]` (0 = no lesion; known, or read on the input by a source-domain reader)."""
    labels = torch.as_tensor(input_labels).reshape(-1)
    if len(labels) != len(outputs):
        raise ValueError(f"input_labels: one per output expected ({len(outputs)}), got {len(labels)}")
    read, has = read_lesions(reader, outputs, intensity, window), labels > 0
    return LesionRates(Rate(int(read[has].sum()), int(has.sum())), Rate(int(read[~has].sum()), int((~has).sum())))
