"""The privacy gate: audit the exact batch about to be exported against the whole training split.

Three per-sample rules and two batch statistics decide whether a batch may leave the machine:

- *pixel detector*: RMS distance to the nearest training image (``memorization.nearest_neighbours``); a sample is
  flagged when it is closer than the j-th smallest of the K held-out-to-train nearest distances, j = round(quantile
  (K + 1)), so a generator drawing new subjects is flagged at a rate of about ``quantile`` (Meehan et al. 2020,
  AISTATS; Carlini et al. 2023, USENIX Security).
- *embedding detector*: cosine similarity to the nearest training image in an in-domain encoder's feature space,
  flagged above the j-th highest held-out-to-train similarity (calibrated the same way).
- *hard copy rule*: the Pearson correlation with the nearest training image, maximised over small circular shifts
  (and a left-right flip), above a threshold calibrated on lightly augmented copies of training images (shifts,
  noise, intensity scale and offset, flips). It never sits below the highest held-out score, so no calibration
  subject would have tripped it. It applies to every image, whatever the batch size.
- *rate test*: the flagged count of each detector against its expected rate by an exact one-sided test,
  Bonferroni over the two detectors. The threshold is the j-th most extreme of K held-out values, so the rate a
  non-copying model is flagged at is itself random, Beta(j, K + 1 - j), and its flagged count is beta-binomial:
  that is the decision's null. A plain binomial test at the mean rate (``scipy.stats.binomtest``, also reported)
  ignores this: it refused the tests' oracle batch of fresh subjects (9 of 64 flagged by a weak encoder: binomial
  p = 0.003, beta-binomial p = 0.027).
  A small batch has no power: the audit states the smallest flagged rate its size can detect.
- *cap*: how many samples may have the same nearest training image while being at least as close to it as a typical
  new subject is to its own (the ``cap_quantile`` of held-out distances): mode collapse onto one patient. Far samples
  are not counted: pure noise is nearest to one "hub" image (the blandest one) without resembling it. The cap never
  sits below the chance maximum that held-out images reach (few training images: many new subjects near each).

This is an audit against the training set, not a privacy guarantee: a sample can leak a patient it is not nearest
to, and features the detectors do not see.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from scipy import optimize, stats
from torch import Tensor

from synthmed.metrics.memorization import nearest_neighbours

# Elements (float64) of the largest array of one correlation block: a block of b queries expands to b x V variants
# of P voxels each, V = (2 max_shift + 1)^d (x 2 with the flip): 250 in 3D. A fixed count of queries per block
# needed ~11 MiB per query at 12^3 and would need ~1.7 GB per query at 64^3; 2^24 elements keep each array at 128 MiB.
_BLOCK_ELEMENTS = 1 << 24
POWERED_RATE = 0.25  # a rate test "has power" when it catches a model that copies a quarter of its samples
DISCLAIMER = ("This is an audit of this exact batch against the model's training set, not a privacy guarantee: "
              "a sample can reveal a patient it is not nearest to, or traits the detectors do not measure.")


@dataclass(frozen=True)
class GateSettings:
    """How the gate calibrates and decides. Every field is recorded in the privacy report.

    Args:
        quantile: calibration quantile of held-out-to-train distances: the expected flagged rate without copying.
        alpha: level of the rate test (split over the two detectors).
        power: power at which the smallest detectable rate is stated.
        max_shift: pixels/voxels of circular shift searched (and used to augment calibration copies) per axis.
        flip: also search and augment a flip of the last axis (left-right); off where a flip is not plausible.
        copy_quantile: the hard rule catches at least ``1 - copy_quantile`` of the calibration copies (unless a
            held-out image scores higher: the threshold then rises to it, and the report says how many it catches).
        copy_noise: std of the Gaussian noise of calibration copies, in [-1, 1] units.
        copy_intensity: largest relative intensity scale change and offset of calibration copies.
        n_copies: calibration copies drawn from the training split.
        max_share: cap: the most samples one training image may be nearest to, as a share of the batch ...
        min_cap: ... but never fewer than this many;
        cap_quantile: ... counting samples nearer than this quantile of held-out-to-train distances.
        seed: the calibration copies' draws.
    """

    quantile: float = 0.05
    alpha: float = 0.05
    power: float = 0.8
    max_shift: int = 2
    flip: bool = True
    copy_quantile: float = 0.01
    copy_noise: float = 0.05
    copy_intensity: float = 0.1
    n_copies: int = 256
    max_share: float = 0.1
    min_cap: int = 3
    cap_quantile: float = 0.5
    seed: int = 0

    def __post_init__(self):
        checks = {"quantile": 0 < self.quantile < 1, "alpha": 0 < self.alpha < 1, "power": 0 < self.power < 1,
                  "max_shift": self.max_shift >= 0, "copy_quantile": 0 <= self.copy_quantile < 1,
                  "copy_noise": self.copy_noise >= 0, "copy_intensity": 0 <= self.copy_intensity < 1,
                  "n_copies": self.n_copies >= 1, "max_share": 0 < self.max_share <= 1, "min_cap": self.min_cap >= 1,
                  "cap_quantile": 0 < self.cap_quantile <= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"privacy.{bad[0]}: invalid value {getattr(self, bad[0])!r} (see GateSettings)")


@dataclass
class Calibration:
    """Thresholds and how they were found (all on the training split and held-out real images)."""

    n_train: int
    n_heldout: int
    rank: int  # thresholds are the rank-th most extreme held-out value ...
    expected_rate: float  # ... so a non-copying model is flagged at rank / (n_heldout + 1) on average
    pixel_threshold: float | None  # RMS distance, [-1, 1] units: flagged below (None: skipped)
    cap_distance: float  # samples nearer than this to their nearest training image count towards the cap
    embed_threshold: float | None  # cosine similarity: flagged above (None: no encoder)
    copy_threshold: float  # shift-tolerant correlation: flagged above
    copy_threshold_from_copies: float  # the copy_quantile quantile of the calibration copies' scores
    heldout_max_copy_score: float  # the highest held-out score: the threshold never sits below it
    copy_recall: float  # share of calibration copies above copy_threshold
    n_copies: int


@dataclass
class RateTest:
    """One detector's flagged count against its expected rate (exact one-sided test, see the module docstring)."""

    detector: str
    flagged: int
    n: int
    expected_rate: float  # rank / (n_heldout + 1)
    p_value: float  # beta-binomial: the calibration's own uncertainty included (the decision)
    binomial_p_value: float  # scipy.stats.binomtest at expected_rate, calibration taken as exact (for reference)
    level: float  # alpha after the Bonferroni split
    rate_ci95: tuple[float, float]  # Clopper-Pearson interval of the flagged rate
    detectable_rate: float | None  # smallest true rate found with `power` (None: no count of n can reject)
    power: float
    powered: bool  # False: the batch is too small for this test to catch a copying model (see POWERED_RATE)

    @property
    def rejects(self) -> bool:
        return self.p_value < self.level


@dataclass
class Audit:
    """Per-sample outcomes ``[N]`` and the batch decision."""

    pixel_index: Tensor
    pixel_distance: Tensor
    pixel_flag: Tensor
    embed_index: Tensor | None
    embed_similarity: Tensor | None
    embed_flag: Tensor | None
    copy_index: Tensor
    copy_score: Tensor
    copy_flag: Tensor
    cap: int
    over_cap: Tensor  # bool [N]: samples beyond the cap on their nearest training image (the later ones)
    max_per_train: int  # most samples nearest to one training image
    tests: list[RateTest] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.pixel_flag.numel())

    @property
    def flagged(self) -> Tensor:
        """bool ``[N]``: flagged by a detector or the hard rule, or beyond the cap (what `filter` drops)."""
        out = self.pixel_flag | self.copy_flag | self.over_cap
        return out | self.embed_flag if self.embed_flag is not None else out

    def reasons(self) -> list[str]:
        """Why the batch fails (empty: it passes), in words a user can act on."""
        out = []
        if int(self.copy_flag.sum()):
            out.append(f"{int(self.copy_flag.sum())} of {self.n} samples are near-exact copies of training images "
                       f"(hard rule: shift-tolerant correlation above the calibrated threshold)")
        for t in self.tests:
            if t.rejects:
                out.append(f"{t.flagged} of {t.n} samples flagged by the {t.detector} detector, expected rate "
                           f"{t.expected_rate:g} (exact beta-binomial p = {t.p_value:.2g} < {t.level:g})")
        if self.max_per_train > self.cap:
            out.append(f"{self.max_per_train} samples share one nearest training image (cap {self.cap}): "
                       f"collapse onto one patient")
        return out

    @property
    def passed(self) -> bool:
        return not self.reasons()


class PrivacyGate:
    """Calibrated on the training split and held-out real images; audits batches of samples.

    Args:
        train: every training image ``[M, C, *spatial]`` in [-1, 1].
        heldout: real images the model did not see ``[K, C, *spatial]`` (the calibration set); K = 1 skips the two
            detectors (the hard rule and the cap still apply).
        settings: thresholds, calibration copies and decision rules.
        embed: images ``[N, C, *spatial]`` -> features ``[N, F]`` (an in-domain encoder); None: pixel detector only.
    """

    def __init__(self, train: Tensor, heldout: Tensor, settings: GateSettings = GateSettings(),
                 embed: Callable[[Tensor], Tensor] | None = None):
        if heldout.shape[0] < 1 or train.shape[0] < 1:
            raise ValueError(f"the privacy gate needs >= 1 training and >= 1 held-out image to calibrate, got "
                             f"{train.shape[0]} and {heldout.shape[0]}")
        if heldout.shape[1:] != train.shape[1:]:
            raise ValueError(f"held-out images {tuple(heldout.shape[1:])} differ from training images "
                             f"{tuple(train.shape[1:])}")
        k = heldout.shape[0]
        # One held-out image cannot place a threshold (its rank would be an expected rate of 1/2): the statistical
        # detectors are then skipped, with the reason in the report; the hard rule and the cap still apply.
        self.skipped = None if k >= 2 else f"needs >= 2 held-out (validation) images to calibrate, got {k}"
        embed = embed if self.skipped is None else None
        self.train, self.settings, self.embed = train.float(), settings, embed
        self.rank = max(1, round(settings.quantile * (k + 1)))  # threshold = the rank-th most extreme held-out value
        if k >= 2 and self.rank > k:  # e.g. quantile 0.95 of 9 values: rank 10, past the last one (an IndexError)
            raise ValueError(f"privacy.quantile={settings.quantile:g}: with {k} held-out (validation) images the "
                             f"threshold would be the {self.rank}. most extreme of {k}; use a quantile below "
                             f"{(k + 0.5) / (k + 1):.3f} (it is the expected flagged rate without copying) or more "
                             f"held-out images")
        held_nn = nearest_neighbours(heldout, self.train)
        pixel_threshold = float(held_nn.distance.double().sort().values[self.rank - 1]) if k >= 2 else None
        self.train_features = embed(self.train) if embed else None
        embed_threshold = None
        if embed:
            held_sim, _ = nearest_cosine(embed(heldout), self.train_features)
            embed_threshold = float(held_sim.double().sort(descending=True).values[self.rank - 1])
        near = held_nn.index[held_nn.distance < torch.quantile(held_nn.distance.double(), settings.cap_quantile)]
        self._near_share = (torch.bincount(near, minlength=train.shape[0]).double() + 1) / (k + train.shape[0])
        copies = light_copies(self.train, settings)
        copy_scores, _ = copy_score(copies, self.train, settings.max_shift, settings.flip)
        held_scores, _ = copy_score(heldout, self.train, settings.max_shift, settings.flip)
        from_copies = float(torch.quantile(copy_scores.double(), settings.copy_quantile))
        threshold = max(from_copies, float(held_scores.max()))
        self.calibration = Calibration(
            n_train=train.shape[0], n_heldout=k, rank=self.rank, expected_rate=self.rank / (k + 1),
            pixel_threshold=pixel_threshold,
            cap_distance=float(torch.quantile(held_nn.distance.double(), settings.cap_quantile)),
            embed_threshold=embed_threshold, copy_threshold=threshold, copy_threshold_from_copies=from_copies,
            heldout_max_copy_score=float(held_scores.max()), copy_recall=float((copy_scores > threshold).double().mean()),
            n_copies=len(copies))

    def cap(self, n: int) -> int:
        """The most samples of a batch of ``n`` that may share one nearest training image (near ones only).

        At least ``max(min_cap, ceil(max_share n))``, and never below what a non-copying model reaches by chance:
        the (1 - alpha / M) quantile of Binomial(n, p_m) for the training image m that held-out images pick most
        often (p_m: its add-one share of near held-out images). With few training images every one of them is
        near many new subjects: on 8 training images, fresh phantoms put 10 of 64 near one."""
        s, share = self.settings, self._near_share
        chance = int(stats.binom.ppf(1 - s.alpha / len(share), n, float(share.max())))
        return max(s.min_cap, math.ceil(s.max_share * n), chance)

    @torch.no_grad()
    def audit(self, samples: Tensor) -> Audit:
        """Every rule on ``samples`` ``[N, C, *spatial]`` in [-1, 1] (the exact batch to export)."""
        if samples.shape[1:] != self.train.shape[1:]:
            raise ValueError(f"samples {tuple(samples.shape[1:])} differ from training images "
                             f"{tuple(self.train.shape[1:])}")
        c, s = self.calibration, self.settings
        nn = nearest_neighbours(samples.float(), self.train)
        pixel_flag = nn.distance < (-math.inf if c.pixel_threshold is None else c.pixel_threshold)
        e_index = e_sim = e_flag = None
        if self.embed:
            e_sim, e_index = nearest_cosine(self.embed(samples.float()), self.train_features)
            e_flag = e_sim > c.embed_threshold
        score, index = copy_score(samples.float(), self.train, s.max_shift, s.flip)
        n = samples.shape[0]
        cap = self.cap(n)
        near = nn.distance < c.cap_distance
        over_cap, most = _over_cap(torch.where(near, nn.index, -1 - torch.arange(n)), cap)  # far: own bucket
        audit = Audit(nn.index, nn.distance, pixel_flag, e_index, e_sim, e_flag, index, score, score > c.copy_threshold,
                      cap, over_cap, most)
        flags = {} if self.skipped else {"pixel": pixel_flag, **({"embedding": e_flag} if e_flag is not None else {})}
        audit.tests = [rate_test(name, int(f.sum()), n, c.rank, c.n_heldout, s.alpha / len(flags), s.power)
                       for name, f in flags.items()]
        return audit

    def report(self, audit: Audit, top_k: int = 8) -> dict:
        """The JSON-able record of an audit: rules, thresholds and their calibration, counts, tests, decision."""
        s, c = self.settings, self.calibration
        detectors = {
            "pixel_nearest_neighbour": {
                "statistic": "RMS pixel distance to the nearest training image, [-1, 1] units",
                "flagged_if": "distance < threshold", "threshold": c.pixel_threshold,
                "calibration": f"the {c.rank}. smallest nearest-training distance of {c.n_heldout} held-out real "
                               f"images (expected rate {c.expected_rate:.4f})", "flagged": int(audit.pixel_flag.sum())},
            "hard_copy_rule": {
                "statistic": f"Pearson correlation with the nearest training image, maximised over circular shifts "
                             f"of up to {s.max_shift} px per axis{' and a left-right flip' if s.flip else ''}",
                "flagged_if": "score > threshold (any one sample refuses the batch)", "threshold": c.copy_threshold,
                "calibration": f"max of the {s.copy_quantile:g} quantile of {c.n_copies} lightly augmented training "
                               f"copies (shift <= {s.max_shift} px, noise std {s.copy_noise:g}, intensity scale/offset "
                               f"<= {s.copy_intensity:g}{', flips' if s.flip else ''}) = "
                               f"{c.copy_threshold_from_copies:.6g} and the highest held-out score "
                               f"{c.heldout_max_copy_score:.6g}",
                "calibration_copies_caught": c.copy_recall, "flagged": int(audit.copy_flag.sum())},
        }
        if self.skipped:
            detectors["pixel_nearest_neighbour"] = {"skipped": self.skipped}
            detectors["embedding_cosine"] = {"skipped": self.skipped}
        if audit.embed_flag is not None:
            detectors["embedding_cosine"] = {
                "statistic": "cosine similarity to the nearest training image in the in-domain encoder's features",
                "flagged_if": "similarity > threshold", "threshold": c.embed_threshold,
                "calibration": f"the {c.rank}. highest nearest-training similarity of {c.n_heldout} held-out real "
                               f"images (expected rate {c.expected_rate:.4f})", "flagged": int(audit.embed_flag.sum())}
        order = audit.pixel_distance.argsort()[:top_k]
        return {
            "statement": DISCLAIMER,
            "passed": audit.passed, "reasons": audit.reasons(), "n_samples": audit.n,
            "n_flagged": int(audit.flagged.sum()),
            "flagged_samples": audit.flagged.nonzero().flatten().tolist(),
            "detectors": detectors,
            "rate_tests": [_test_record(t) for t in audit.tests],
            "cap": {"max_samples_per_training_image": audit.cap, "observed_max": audit.max_per_train,
                    "rule": f"max({s.min_cap}, ceil({s.max_share:g} x n), the chance maximum of held-out images) "
                            f"samples nearer than the {s.cap_quantile:g} quantile of held-out-to-train distances "
                            f"({c.cap_distance:.6g})"},
            "calibration": asdict(c), "settings": asdict(s),
            "top_pairs": [{"sample": int(i), "train_index": int(audit.pixel_index[i]),
                           "distance": float(audit.pixel_distance[i]), "copy_score": float(audit.copy_score[i])}
                          for i in order],
        }


def _test_record(t: RateTest) -> dict:
    out = asdict(t) | {"rejects": t.rejects, "flagged_rate": t.flagged / t.n}
    found = ("no flagged count could reject" if t.detectable_rate is None else
             f"only a true flagged rate of {t.detectable_rate:.3f} or more is detected with power {t.power:g}")
    out["power_note"] = (f"n = {t.n}: {found} (expected rate {t.expected_rate:g}, level {t.level:g})"
                         + ("" if t.powered else "; the batch is too small for this test to catch a copying model, "
                            "only the hard copy rule and the cap protect it"))
    return out


def _over_cap(index: Tensor, cap: int) -> tuple[Tensor, int]:
    """bool ``[N]``: the samples after the first ``cap`` that share a nearest training image; and the largest share."""
    seen: dict[int, int] = {}
    over = torch.zeros(len(index), dtype=torch.bool)
    for i, t in enumerate(index.tolist()):
        seen[t] = seen.get(t, 0) + 1
        over[i] = seen[t] > cap
    return over, max(seen.values(), default=0)


def rate_test(detector: str, flagged: int, n: int, rank: int, n_heldout: int, level: float,
              power: float) -> RateTest:
    """Exact one-sided test of ``flagged`` of ``n`` against a threshold at the ``rank``-th most extreme of
    ``n_heldout`` calibration values: under no copying the count is BetaBinomial(n, rank, n_heldout + 1 - rank)."""
    a, b = rank, n_heldout + 1 - rank
    expected = a / (a + b)
    p = float(stats.betabinom.sf(flagged - 1, n, a, b))
    plain = float(stats.binomtest(flagged, n, expected, alternative="greater").pvalue)
    ci = stats.binomtest(flagged, n, expected).proportion_ci(0.95, method="exact")  # two-sided Clopper-Pearson
    detectable = detectable_rate(n, lambda k: stats.betabinom.sf(k - 1, n, a, b), level, power)
    return RateTest(detector, flagged, n, expected, p, plain, level, (float(ci.low), float(ci.high)), detectable,
                    power, detectable is not None and detectable <= POWERED_RATE)


def detectable_rate(n: int, null_sf, level: float, power: float = 0.8) -> float | None:
    """The smallest true flagged rate that the test of size ``level`` at ``n`` detects with ``power``.

    Args:
        n: batch size.
        null_sf: k -> P(count >= k) under no copying.
        level: the test's size.
        power: wanted power.

    The test rejects from the smallest count k with ``null_sf(k) <= level``; the rate is the p where
    P(Binomial(n, p) >= k) = power. None when even n of n flagged would not reject (the batch is too small)."""
    k = next((k for k in range(n + 1) if null_sf(k) <= level), None)
    if k is None:
        return None
    return float(optimize.brentq(lambda p: stats.binom.sf(k - 1, n, p) - power, 1e-12, 1.0))


def nearest_cosine(queries: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Highest cosine similarity ``[N]`` of each query ``[N, F]`` to the rows of ``reference`` ``[M, F]``, and the
    index ``[N]`` of that row."""
    q = torch.nn.functional.normalize(queries.double(), dim=1)
    r = torch.nn.functional.normalize(reference.double(), dim=1)
    sims, index = zip(*((block @ r.T).max(1) for block in q.split(1024)))
    return torch.cat(sims).float(), torch.cat(index)


def _standardized(x: Tensor) -> Tensor:
    """Rows ``[N, P]`` centred and scaled to unit norm (float64): Pearson correlation is then a dot product."""
    x = x.double() - x.double().mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _variants(x: Tensor, max_shift: int, flip: bool) -> Tensor:
    """Every circular shift of up to ``max_shift`` per spatial axis (and each flipped left-right) of ``x``
    ``[B, C, *spatial]`` -> ``[B, V, P]``."""
    dims = tuple(range(2, x.ndim))
    steps = range(-max_shift, max_shift + 1)
    bases = [x, x.flip(-1)] if flip else [x]
    out = [torch.roll(b, s, dims) for b in bases for s in itertools.product(steps, repeat=len(dims))]
    return torch.stack(out, 1).flatten(2)


def copy_score(queries: Tensor, train: Tensor, max_shift: int, flip: bool) -> tuple[Tensor, Tensor]:
    """Shift- and flip-tolerant correlation: for each query ``[N, C, *spatial]`` the highest Pearson correlation of
    any of its shifted/flipped variants with any training image ``[M, ...]``; returns (score ``[N]``, train index)."""
    ref = _standardized(train.flatten(1))
    n_variants = (2 * max_shift + 1) ** (queries.ndim - 2) * (2 if flip else 1)
    per_query = n_variants * max(ref.shape[1], ref.shape[0])  # variants x voxels, and the [V, M] correlations
    scores, index = [], []
    for block in queries.split(max(1, _BLOCK_ELEMENTS // per_query)):
        v = _variants(block, max_shift, flip)  # [b, V, P]
        corr = _standardized(v.flatten(0, 1)) @ ref.T  # [b * V, M]
        best, where = corr.view(v.shape[0], v.shape[1], -1).flatten(1).max(1)
        scores.append(best)
        index.append(where % ref.shape[0])
    return torch.cat(scores).float(), torch.cat(index)


def light_copies(train: Tensor, settings: GateSettings) -> Tensor:
    """``n_copies`` lightly augmented training images ``[n, C, *spatial]``: what a copying model emits."""
    s = settings
    gen = torch.Generator().manual_seed(s.seed)
    idx = torch.randint(0, train.shape[0], (s.n_copies,), generator=gen)
    return augment(train[idx], s.max_shift, s.copy_noise, s.copy_intensity, s.flip, gen)


def augment(x: Tensor, max_shift: int, noise: float, intensity: float, flip: bool,
            gen: torch.Generator) -> Tensor:
    """Per image ``[B, C, *spatial]``: a circular shift of up to ``max_shift`` per axis, an optional left-right flip,
    intensity ``a x + b`` with ``|a - 1|, |b| <= intensity``, Gaussian noise of std ``noise``; clipped to [-1, 1]."""
    out = []
    dims = tuple(range(1, x.ndim - 1))  # spatial dims of one image [C, *spatial]
    for img in x:
        shifts = [int(v) for v in torch.randint(-max_shift, max_shift + 1, (len(dims),), generator=gen)]
        img = torch.roll(img, shifts, dims)
        if flip and bool(torch.rand(1, generator=gen) < 0.5):
            img = img.flip(-1)
        scale, offset = intensity * (2 * torch.rand(2, generator=gen) - 1)
        img = (1 + scale) * img + offset + noise * torch.randn(img.shape, generator=gen)
        out.append(img.clamp(-1, 1))
    return torch.stack(out)
