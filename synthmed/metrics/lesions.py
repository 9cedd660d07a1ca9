"""Lesion preservation of a translator: does it keep the lesions of its input, and does it invent new ones?

A distribution-matching translator (CycleGAN) trained where the two domains have different disease mixes learns to
add or remove findings to match the target's mix (Cohen et al., MICCAI 2018). Two rates expose it, read by a lesion
reader trained on the *target* domain (the `label` encoder of synthmed.metrics.domain, trained on real target-domain
images and their lesion labels):

- `val/lesion_preserved_rate`: share of inputs with a lesion whose translation the reader reads as a lesion;
- `val/lesion_appeared_rate`: share of inputs without a lesion whose translation the reader reads as a lesion.

The reader is not perfect, so the same two rates on the real paired targets (`..._real`: its sensitivity and its
false-positive rate) are the reference a translator's values are read against, where paired truth exists. Every
rate comes with its n and a Wilson 95 % interval. `lesion_metrics` is what a translator's final evaluation and
`synthmed evaluate` log (through `MetricSuite.lesion_preservation` and `synthmed.evaluation.step.lesion_scores`).

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
        """The metric keys of names.py (optionally renamed, e.g. `names.on_real`) -> values, with each rate's n and
        its Wilson 95 % interval (`..._ci_low`, `..._ci_high`; NaN when n = 0)."""
        out = {}
        for key, n_key, rate in ((names.LESION_PRESERVED_RATE, names.LESION_N_POSITIVE, self.preserved),
                                 (names.LESION_APPEARED_RATE, names.LESION_N_NEGATIVE, self.appeared)):
            key = suffix(key)
            out |= {key: rate.value, names.ci_low(key): rate.ci[0], names.ci_high(key): rate.ci[1],
                    suffix(n_key): float(rate.n)}
        return out


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


def reader_window(intensity: dict, window_hu: Sequence[float] | None) -> tuple[float, float] | None:
    """The reader's display window: `window_hu` for HU targets (CT), None (the full range) for any other unit, where
    an HU window would mean nothing."""
    if window_hu is None or intensity.get("unit") != "HU":
        return None
    return float(window_hu[0]), float(window_hu[1])


def lesion_metrics(bank: EncoderBank, outputs: Tensor, input_labels: Tensor, train_targets: Tensor,
                   train_labels: Tensor, intensity: dict, window_hu: Sequence[float] | None = BRAIN_WINDOW_HU,
                   real: Tensor | None = None, fingerprint: str | None = None) -> tuple[dict[str, float],
                                                                                       dict[str, str]]:
    """A translator's lesion preservation as metric values and provenance tags (its final evaluation).

    Args:
        bank: where the target-domain reader is trained once and cached (the suite's encoders).
        outputs: translations `[N, C, *spatial]` in [-1, 1], one per distinct input.
        input_labels: the inputs' lesion labels `[N]` (0 = none).
        train_targets: real target-domain training images `[M, C, *spatial]`; `train_labels` their labels `[M]`.
        intensity: the target's intensity record (its `unit` decides whether `window_hu` applies).
        window_hu: the reader's display window for HU targets (see `reader_window`).
        real: the real paired targets of the same inputs `[N, C, *spatial]`, or None (no paired truth): the
            reader's own rates on them (`..._real`) are the reference a translator's rates are read against.
        fingerprint: names the reader's cache file.

    Returns:
        (values: the rates, their n and Wilson 95 % intervals, under names.py keys; tags: `lesion_reader.*`).
    """
    window = reader_window(intensity, window_hu)
    reader = lesion_reader(bank, train_targets, train_labels, intensity, window, fingerprint)
    values = lesion_rates(reader, outputs, input_labels, intensity, window).metrics()
    if real is not None:
        values |= lesion_rates(reader, real, input_labels, intensity, window).metrics(names.on_real)
    unit = intensity.get("unit", "native units")
    tags = reader.provenance("lesion_reader") | {
        "lesion_reader.window": f"{list(window)} {unit}" if window else "full range",
        "lesion_reader.n_train_lesion": str(int(torch.as_tensor(train_labels).gt(0).sum())),
        "lesion_preservation.interval": "Wilson 95 %, over distinct inputs"}
    return values, tags


def summary_line(values: dict[str, float]) -> str | None:
    """`preserved 0.92 (12/13; 95 % CI 0.67-0.99), appeared ...` from final metric values, or None without them."""
    if names.LESION_PRESERVED_RATE not in values:
        return None
    parts = []
    for label, key, n_key in (("preserved", names.LESION_PRESERVED_RATE, names.LESION_N_POSITIVE),
                              ("appeared", names.LESION_APPEARED_RATE, names.LESION_N_NEGATIVE)):
        n, rate = int(values[n_key]), values[key]
        if not n:  # no input of that kind among those scored: no rate, rather than "nan"
            parts.append(f"{label} - (0/0)")
            continue
        parts.append(f"{label} {rate:.2f} ({round(rate * n)}/{n}; 95 % CI "
                     f"{values[names.ci_low(key)]:.2f}-{values[names.ci_high(key)]:.2f})")
    real = names.on_real(names.LESION_APPEARED_RATE)
    if real in values:
        parts.append(f"reader on the real targets: preserved {values[names.on_real(names.LESION_PRESERVED_RATE)]:.2f}"
                     f", appeared {values[real]:.2f}")
    return "; ".join(parts)
