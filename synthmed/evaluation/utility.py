"""Downstream utility: does training a classifier on synthetic images help, above all for the rare class?

Every regime trains the same classifier (same steps, batch size, optimizer, validation split) and is scored on the
same real test cases:

- `real`: the (sub-sampled) real training split as it is;
- `real+oversample`: the same, the rare class drawn as often as the common one (repeated to balance);
- `real+augment`: the same, with classic MONAI augmentation (noise, small rotation and scaling, left-right flip);
- `real+synth`: the real images plus `synth_ratio` synthetic images per real image;
- `synth`: as many synthetic images alone (replacement).

The gain of a synthetic regime is measured against the best of the real baselines, re-chosen in every bootstrap
replicate, so that a generator that copies its training images does not look useful (metrics/utility_stats.py).
Nothing here talks to MLflow; `synthmed/utility.py` restores the runs and records the result.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from synthmed.data.datamodule import covariates
from synthmed.evaluation.classifiers import UtilityClassifier
from synthmed.metrics import utility_stats as us
from synthmed.metrics.cache import tensor_digest
from synthmed.metrics.domain import one_thread
from synthmed.models.base import GenerativeModule

log = logging.getLogger(__name__)

REGIMES = ("real", "real+oversample", "real+augment", "real+synth", "synth")
BASELINES = ("real", "real+oversample", "real+augment")  # the bar: the best of these, never `real` alone
SYNTHETIC = ("real+synth", "synth")
COVARIATES = ("sex", "age")  # written per test case into predictions.csv when the data set has them


# ------------------------------------------------------------------------------------------------------------ data
@dataclass
class LabelledSplit:
    """One real split held in memory: images ``[N, C, *spatial]``, labels ``[N]``, ids, covariates ``{name: [N]}``."""

    name: str
    images: Tensor
    labels: Tensor
    ids: list[str]
    covariates: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, dataset, name: str, where: str) -> LabelledSplit:
        """Stack a dataset split; ``where`` names the data for errors (e.g. "dataset of run abc")."""
        if len(dataset) == 0:
            raise ValueError(f"{where}: split {name!r} is empty")
        items = [dataset.item(i, augment=False) if hasattr(dataset, "item") else dataset[i]
                 for i in range(len(dataset))]
        if "label" not in items[0]:
            raise ValueError(f"{where}: the items of split {name!r} have no 'label', so there is no class to "
                             f"classify; synthmed utility needs a labelled data set (DESIGN.md dataset items)")
        cov = {k: v for k, v in covariates(dataset).items() if k != "label"}
        return cls(name, torch.stack([it["image"] for it in items]),
                   torch.as_tensor([int(it["label"]) for it in items]),
                   [str(it.get("id", f"{name}-{i}")) for i, it in enumerate(items)], cov)

    def digests(self) -> list[str]:
        """SHA-256 of every image: a copied image is caught even under another id."""
        return [tensor_digest(x) for x in self.images]

    def subset(self, idx: Tensor) -> LabelledSplit:
        return LabelledSplit(self.name, self.images[idx], self.labels[idx], [self.ids[i] for i in idx.tolist()],
                             {k: v[idx] for k, v in self.covariates.items()})


@dataclass(frozen=True)
class Seen:
    """What a generator (or the classifier) was trained on, for the leakage guard: ids and image digests."""

    ids: frozenset[str]
    digests: frozenset[str]

    @classmethod
    def of(cls, split: LabelledSplit) -> Seen:
        return cls(frozenset(split.ids), frozenset(split.digests()))


def check_leakage(test: LabelledSplit, seen: Mapping[str, Seen]) -> None:
    """Refuse a test split that shares a subject id or an identical image with anything a model trained on."""
    test_digests = test.digests()
    for who, record in seen.items():
        ids = sorted(set(test.ids) & record.ids)
        ids += sorted(i for i, d in zip(test.ids, test_digests) if d in record.digests and i not in ids)
        if ids:
            raise ValueError(f"leakage: the test split shares {len(ids)} case(s) with what {who} trained on "
                             f"(ids or identical images): {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}; "
                             f"the test split must be disjoint by subject from every training set")


# ----------------------------------------------------------------------------------------------- synthetic sources
class SyntheticSource(ABC):
    """Labelled synthetic images: a trained run's sampler, or a known-answer generator in the tests.

    Attributes:
        classes: the labels it can generate.
        seen: what its generator(s) trained on (name -> ids and digests), for the leakage guard.
    """

    classes: tuple[int, ...] = ()
    seen: dict[str, Seen] = {}

    @abstractmethod
    def sample(self, labels: Tensor, seed: int, real: LabelledSplit) -> Tensor:
        """Images ``[n, C, *spatial]`` in [-1, 1] of the classes ``labels`` ``[n]``; reproducible from ``seed``.

        ``real`` is the real training sub-sample the classifier gets next to them; a trained run ignores it, a
        known-answer copier copies from it (copying what the classifier has already must not count as a gain)."""


class ModelSource(SyntheticSource):
    """A label-conditioned model (``{None: model}``) or one unconditional model per class (``{0: m0, 1: m1}``).

    Args:
        models: see above.
        seen: what the models trained on.
        attrs: covariate values to draw from (each ``[M]``) when a model is also conditioned on covariates
            (``model.cond=both``): each synthetic image gets those of a random real training subject.
        batch_size: images per sampling call (memory only; samples do not depend on it).
    """

    def __init__(self, models: Mapping[int | None, GenerativeModule], seen: Mapping[str, Seen] | None = None,
                 attrs: Mapping[str, Tensor] | None = None, batch_size: int = 64) -> None:
        self.models, self.seen, self.batch_size = dict(models), dict(seen or {}), batch_size
        self.attrs = dict(attrs or {})
        if None in self.models:
            model = self.models[None]
            cond = model.conditioning
            if cond is None or not cond.uses_label:
                raise ValueError("this run is unconditional (model.cond is not label/both): it cannot say which class "
                                 "an image shows. Give one run per class, runs={0: <id>, 1: <id>}, or train with "
                                 "model.cond=label")
            missing = [k for k in cond.attr_ranges if k not in self.attrs]
            if missing:
                raise ValueError(f"the run is also conditioned on {missing}, which the real training split lacks")
            self.classes = tuple(range(cond.num_classes))
        else:
            self.classes = tuple(sorted(int(c) for c in self.models))

    def sample(self, labels: Tensor, seed: int, real: LabelledSplit | None = None) -> Tensor:
        if None in self.models:
            return self._draw(self.models[None], labels, seed, conditional=True)
        out = None
        for c, model in self.models.items():
            idx = torch.nonzero(labels == c)[:, 0]
            if len(idx) == 0:
                continue
            images = self._draw(model, labels[idx], seed + 7919 * int(c), conditional=False)  # a stream per class
            out = images.new_empty((len(labels), *images.shape[1:])) if out is None else out
            out[idx] = images
        return out

    @torch.no_grad()
    def _draw(self, model: GenerativeModule, labels: Tensor, seed: int, conditional: bool) -> Tensor:
        cond = None
        if conditional:
            pick = torch.Generator().manual_seed(seed + 1)
            cond = {"label": labels, **{k: v[torch.randint(len(v), (len(labels),), generator=pick)]
                                        for k, v in self.attrs.items() if k in model.conditioning.attr_ranges}}
        parts = []
        for start in range(0, len(labels), self.batch_size):  # offsets: chunks give what one big call would
            part = slice(start, min(start + self.batch_size, len(labels)))
            sub = {k: v[part] for k, v in cond.items()} if cond else None
            parts.append(model.sample(part.stop - start, generator=torch.Generator().manual_seed(seed), cond=sub,
                                      offset=start).cpu())
        return torch.cat(parts).clamp(-1, 1)


# --------------------------------------------------------------------------------------------------------- settings
@dataclass
class UtilitySettings:
    """What the harness runs; the field names are the keys of conf/utility.yaml (errors name them).

    Args:
        regimes: a subset of `REGIMES`.
        real_fraction: shares of the real training split, each in (0, 1] (stratified, seeded sub-samples).
        seeds: classifier initialization, batch order, sub-sample and synthetic draw per seed: seeds 0..seeds-1.
        synth_ratio: synthetic images per real image in `real+synth` (and the size of `synth`).
        synth_labels: class -> share of the synthetic images (None: every class equally often).
        n_boot: bootstrap replicates of every interval.
        min_test_positives: fewest rare-class (label 1) test cases accepted; below it the intervals are too wide
            to say anything.
        boot_seed: seed of the bootstrap resampling.
    """

    regimes: Sequence[str] = REGIMES
    real_fraction: Sequence[float] = (0.1, 0.5, 1.0)
    seeds: int = 5
    synth_ratio: float = 1.0
    synth_labels: Mapping[int, float] | None = None
    n_boot: int = 1000
    min_test_positives: int = 10
    boot_seed: int = 0

    def check(self, classes: Sequence[int] | None) -> None:
        """Refuse bad settings by key (before any image is drawn or any weight trained)."""
        bad = [r for r in self.regimes if r not in REGIMES]
        if bad or not self.regimes:
            raise ValueError(f"regimes: unknown {bad}, expected a non-empty subset of {list(REGIMES)}")
        if not self.real_fraction or any(not 0 < f <= 1 for f in self.real_fraction):
            raise ValueError(f"real_fraction must be a non-empty list of shares in (0, 1], got "
                             f"{list(self.real_fraction)}")
        if self.seeds < 1 or self.n_boot < 100:
            raise ValueError(f"seeds must be >= 1 and n_boot >= 100, got seeds={self.seeds}, n_boot={self.n_boot}")
        if self.synthetic and self.synth_ratio <= 0:
            raise ValueError(f"synth_ratio must be > 0, got {self.synth_ratio}")
        wanted = sorted(int(c) for c in (self.synth_labels or {0: 1, 1: 1}))
        if self.synthetic and classes is not None and not set(wanted) <= set(classes):
            raise ValueError(f"synth_labels asks for classes {wanted}, but the generator can make only "
                             f"{list(classes)} (a conditional run's model.num_classes, or the keys of runs=)")
        if self.synth_labels and (any(v < 0 for v in self.synth_labels.values())
                                  or sum(self.synth_labels.values()) <= 0):
            raise ValueError(f"synth_labels must map classes to non-negative shares, got {dict(self.synth_labels)}")

    @property
    def synthetic(self) -> bool:
        return any(r in SYNTHETIC for r in self.regimes)


def check_data(train: LabelledSplit, test: LabelledSplit, settings: UtilitySettings) -> None:
    """Binary labels, enough rare cases in the test split, both classes in every sub-sample."""
    for split in (train, test):
        values = sorted(set(split.labels.tolist()))
        if values != [0, 1]:
            raise ValueError(f"split {split.name!r}: labels must be 0 (common) and 1 (rare), got classes {values}")
    n_pos, n_neg = int(test.labels.sum()), int((test.labels == 0).sum())
    if n_pos < settings.min_test_positives or n_neg < settings.min_test_positives:
        raise ValueError(f"split {test.name!r} has {n_pos} rare (label 1) and {n_neg} common cases; "
                         f"min_test_positives={settings.min_test_positives} of each are needed for the intervals: "
                         f"use a larger test split (e.g. dataset.datamodule.dataset.n_test) or lower "
                         f"min_test_positives")
    for f in settings.real_fraction:
        if min(_count(int((train.labels == c).sum()), f) for c in (0, 1)) < 1:
            raise ValueError(f"real_fraction={f}: the sub-sample of split {train.name!r} "
                             f"({int(train.labels.sum())} rare of {len(train.labels)}) would hold no rare case")


# ------------------------------------------------------------------------------------------------------ sampling
def _count(n: int, fraction: float) -> int:
    return int(round(n * fraction))


def stratified_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Indices of a stratified sub-sample: round(fraction * n_c) of every class c. For one seed the sample of a
    smaller fraction lies inside that of a larger one (nested, so curves over fractions are not reshuffled)."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for c in sorted(set(labels.tolist())):
        members = torch.nonzero(labels == c)[:, 0]
        parts.append(members[torch.randperm(len(members), generator=gen)][:_count(len(members), fraction)])
    return torch.cat(parts).sort().values


def label_plan(n: int, shares: Mapping[int, float] | None) -> Tensor:
    """``[n]`` labels in the mix ``shares`` (None: classes 0 and 1 equally often), interleaved so that every
    prefix follows the mix to within one image (largest remainder): exact counts, no sampling noise in the mix."""
    shares = {int(k): float(v) for k, v in (shares or {0: 1.0, 1: 1.0}).items() if v > 0}
    total = sum(shares.values())
    classes = sorted(shares)
    counts = {c: 0 for c in classes}
    out = []
    for i in range(1, n + 1):
        c = max(classes, key=lambda k: shares[k] / total * i - counts[k])
        counts[c] += 1
        out.append(c)
    return torch.as_tensor(out, dtype=torch.long)


def augmentation(spatial_dims: int, seed: int) -> Callable[[Tensor], Tensor]:
    """Classic augmentation of a batch ``[B, C, *spatial]``, each part per image with probability 0.5: left-right
    flip (heads are about symmetric, front and back are not), rotation in the axial (H-W) plane up to 15 degrees,
    isotropic scaling 0.9-1.1 and Gaussian noise of std 0.05 ([-1, 1] units). Rotation and scaling are one batched
    resampling through MONAI's `AffineTransform` (border padding): per-image array transforms cost a Python call
    per image and step, which made this regime 30x slower than the others."""
    from monai.networks.layers import AffineTransform

    gen = torch.Generator().manual_seed(seed)
    warp = AffineTransform(normalized=True, padding_mode="border", align_corners=False, reverse_indexing=True)

    def apply(x: Tensor) -> Tensor:
        b, coin = x.shape[0], lambda: torch.rand(x.shape[0], generator=gen) < 0.5
        flip = coin().view(b, *(1,) * (x.ndim - 1))
        x = torch.where(flip, x.flip(3), x)  # dim 3 is W, left-right, of [B, C, H, W(, D)]
        angle = torch.where(coin(), (torch.rand(b, generator=gen) * 2 - 1) * 0.26, torch.zeros(b))  # rad
        scale = torch.where(coin(), 0.9 + 0.2 * torch.rand(b, generator=gen), torch.ones(b))
        theta = torch.eye(spatial_dims + 1)[:spatial_dims].repeat(b, 1, 1)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # pull: output (i, j) reads input R (i, j) / s
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        if spatial_dims == 3:
            theta[:, 2, 2] = 1.0 / scale
        x = warp(x, theta)
        noise = torch.randn(x.shape, generator=gen) * 0.05 * coin().view(b, *(1,) * (x.ndim - 1))
        return (x + noise).clamp(-1, 1)

    return apply


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class Regime:
    """One regime's training set: images ``[n, C, *spatial]``, labels ``[n]``, draw weights ``[n]``."""

    images: Tensor
    labels: Tensor
    weights: Tensor
    augment: bool = False


def build_regime(name: str, real: LabelledSplit, synth: tuple[Tensor, Tensor] | None) -> Regime:
    """The training set of regime ``name`` from the real sub-sample and the synthetic (images, labels)."""
    x, y = real.images, real.labels
    if name in ("real+synth", "synth"):
        sx, sy = synth
        x, y = (torch.cat([x, sx]), torch.cat([y, sy])) if name == "real+synth" else (sx, sy)
    weights = torch.ones(len(y), dtype=torch.float64)
    if name == "real+oversample":
        weights = 1.0 / torch.bincount(y).double()[y]
    return Regime(x, y, weights, augment=name == "real+augment")


def fit(classifier: UtilityClassifier, regime: Regime, val: tuple[Tensor, Tensor], seed: int) -> torch.nn.Module:
    """Train a fresh head for ``classifier.steps`` steps; keep the weights with the lowest validation loss."""
    gen = torch.Generator().manual_seed(seed)
    augment = augmentation(regime.images.ndim - 2, seed) if regime.augment else None
    fixed = None if augment else classifier.embed(regime.images)  # un-augmented: embedded once
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = classifier.head(classifier.embed(regime.images[:1])[0])
    opt = torch.optim.AdamW(head.parameters(), lr=classifier.lr, weight_decay=classifier.weight_decay)
    best, best_state = float("inf"), None
    for step in range(1, classifier.steps + 1):
        idx = torch.multinomial(regime.weights, classifier.batch_size, replacement=True, generator=gen)
        xb = fixed[idx] if fixed is not None else classifier.embed(augment(regime.images[idx]))
        head.train()
        loss = F.binary_cross_entropy_with_logits(head(xb)[:, 0], regime.labels[idx].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % classifier.eval_every == 0 or step == classifier.steps:
            val_loss = F.binary_cross_entropy(predict(head, val[0]), val[1].float()).item()
            if val_loss < best:
                best, best_state = val_loss, {k: v.detach().clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head.eval()


@torch.no_grad()
def predict(head: torch.nn.Module, embedded: Tensor) -> Tensor:
    """Rare-class probabilities ``[N]`` of embedded inputs."""
    head.eval()
    return torch.sigmoid(head(embedded)[:, 0]).clamp(1e-7, 1 - 1e-7)


# ------------------------------------------------------------------------------------------------------- harness
@dataclass
class UtilityResult:
    """Everything the report shows: ``summary`` (JSON-ready) and one prediction row per regime, seed, fraction
    and test case."""

    summary: dict
    predictions: list[dict]


def run_utility(classifier: UtilityClassifier, source: SyntheticSource | None, train: LabelledSplit,
                val: LabelledSplit, test: LabelledSplit, settings: UtilitySettings,
                fingerprint: str | None = None) -> UtilityResult:
    """Train every regime x real fraction x seed, score the test split, and summarize with paired intervals.

    Every input check (settings, labels, test size, leakage) runs before the first weight is trained.
    """
    if settings.synthetic and source is None:
        raise ValueError(f"regimes {[r for r in settings.regimes if r in SYNTHETIC]} need a generator: run= or runs=")
    settings.check(source.classes if source is not None else None)
    check_data(train, test, settings)
    check_leakage(test, {**(source.seen if source is not None else {}), "the classifier (real training split)":
                         Seen.of(train), "model selection (real validation split)": Seen.of(val)})
    with one_thread():  # small convolutions: one thread is faster on a shared CPU and reproducible
        return _run(classifier, source, train, val, test, settings, fingerprint)


def _run(classifier, source, train, val, test, settings, fingerprint) -> UtilityResult:
    classifier.prepare(train.images, train.covariates, fingerprint)
    embedded_val, embedded_test = classifier.embed(val.images), classifier.embed(test.images)
    fractions = sorted(set(float(f) for f in settings.real_fraction))
    scores = np.zeros((len(fractions), len(settings.regimes), settings.seeds, len(test.labels)))
    sizes = {}
    for seed in range(settings.seeds):
        for fi, fraction in enumerate(fractions):
            real = train.subset(stratified_subset(train.labels, fraction, seed))
            synth = _synthetic(source, real, settings, seed) if settings.synthetic else None
            sizes[fraction] = {"n_real": len(real.labels), "n_real_rare": int(real.labels.sum()),
                               "n_synth": len(synth[1]) if synth else 0,
                               "n_synth_rare": int(synth[1].sum()) if synth else 0}
            for ri, name in enumerate(settings.regimes):
                head = fit(classifier, build_regime(name, real, synth), (embedded_val, val.labels), seed)
                scores[fi, ri, seed] = predict(head, embedded_test).numpy()
                log.info("utility: fraction %.3g, seed %d, %s: AUROC %.3f", fraction, seed, name,
                         us.auroc(test.labels.numpy(), scores[fi, ri, seed])[0])
    summary = summarize(scores, test, fractions, sizes, settings)
    return UtilityResult(summary, prediction_rows(scores, test, fractions, settings))


def _synthetic(source: SyntheticSource, real: LabelledSplit, settings: UtilitySettings,
               seed: int) -> tuple[Tensor, Tensor]:
    """``synth_ratio`` synthetic images per real image of the sub-sample, in the ``synth_labels`` mix, and their
    labels; a fresh draw per seed and real fraction."""
    labels = label_plan(max(_count(len(real.labels), settings.synth_ratio), 1), settings.synth_labels)
    images = source.sample(labels, seed, real)
    if tuple(images.shape) != (len(labels), *real.images.shape[1:]):
        raise ValueError(f"the generator made images {list(images.shape)}, expected {[len(labels)]} + "
                         f"{list(real.images.shape[1:])} (the real data's shape): the utility harness needs the "
                         f"same shape")
    bad = int((~torch.isfinite(images.flatten(1))).any(1).sum())
    if bad:  # a diverged generator: NaN trained NaN weights, then a RuntimeError from BCE
        raise ValueError(f"the generator made {bad} of {len(images)} images with NaN or infinite values (seed {seed}); "
                         f"its run diverged: the utility harness needs finite images in [-1, 1]")
    return images.float(), labels


# ------------------------------------------------------------------------------------------------------- summary
METRICS: dict[str, us.Metric] = {
    "auroc": us.auroc, "auprc": us.average_precision, "balanced_accuracy": us.balanced_accuracy,
    "rare_sens_at_spec90": us.sens_at_spec90, "spec_at_sens90": lambda y, s: us.spec_at_sens(y, s, 0.9)[0],
    "brier": us.brier,
}
GAIN_METRICS = ("auroc", "auprc", "rare_sens_at_spec90")  # higher is better for each


def verdict(ci_low: float, ci_high: float) -> str:
    """A gain only when the interval excludes 0; otherwise no difference was shown (which is not equality)."""
    return "gain" if ci_low > 0 else "loss" if ci_high < 0 else "no difference shown"


def summarize(scores: np.ndarray, test: LabelledSplit, fractions: list[float], sizes: dict,
              settings: UtilitySettings) -> dict:
    """Per real fraction: every metric per regime (mean over seeds, paired-bootstrap interval over cases and seeds,
    per-seed values) and the gains of the synthetic regimes over the best real baseline."""
    y = test.labels.numpy()
    regimes = list(settings.regimes)
    out = {"regimes": regimes, "n_test": len(y), "n_test_rare": int(y.sum()), "seeds": settings.seeds,
           "n_boot": settings.n_boot, "level": us.LEVEL, "fractions": []}
    for fi, fraction in enumerate(fractions):
        values = {m: us.bootstrap_values(y, scores[fi], fn, settings.n_boot, settings.boot_seed)
                  for m, fn in METRICS.items()}
        entry = {"real_fraction": fraction, **sizes[fraction], "regimes": {}, "gains": {}}
        for ri, name in enumerate(regimes):
            entry["regimes"][name] = {m: _stat(values[m], us.mean_of(ri)) | {"per_seed": values[m][0][ri].tolist()}
                                      for m in METRICS}
            tp = us.sens_at_spec(y, scores[fi, ri], 0.9)[1]
            k = int(round(float(np.mean(tp))))
            entry["regimes"][name]["rare_sens_at_spec90"]["exact_ci"] = list(us.clopper_pearson(k, int(y.sum())))
        baselines = [regimes.index(r) for r in regimes if r in BASELINES]
        if baselines:
            aurocs = values["auroc"][0].mean(1)
            best = max(baselines, key=lambda i: aurocs[i])
            entry["best_baseline"] = regimes[best]
            for name in (r for r in regimes if r in SYNTHETIC):
                ri = regimes.index(name)
                gain = {m: _stat(values[m], us.gain_over_best(ri, baselines)) for m in GAIN_METRICS}
                for g in gain.values():
                    g["verdict"] = verdict(g["ci_low"], g["ci_high"])
                gain["delong_per_seed"] = [vars(us.delong_difference(y, scores[fi, ri, s], scores[fi, best, s]))
                                           for s in range(settings.seeds)]
                entry["gains"][name] = gain
        out["fractions"].append(entry)
    return out


def _stat(values: tuple[np.ndarray, np.ndarray], statistic) -> dict:
    estimate, lo, hi = us.interval(*values, statistic)
    return {"mean": estimate, "ci_low": lo, "ci_high": hi}


def prediction_rows(scores: np.ndarray, test: LabelledSplit, fractions: list[float],
                    settings: UtilitySettings) -> list[dict]:
    """One row per (regime, seed, real_fraction, test case): the columns of utility/predictions.csv."""
    cov = {k: test.covariates[k].tolist() for k in COVARIATES if k in test.covariates}
    labels = test.labels.tolist()
    rows = []
    for fi, fraction in enumerate(fractions):
        for ri, regime in enumerate(settings.regimes):
            for seed in range(settings.seeds):
                for case, (y, s) in enumerate(zip(labels, scores[fi, ri, seed].tolist())):
                    rows.append({"regime": regime, "seed": seed, "real_fraction": fraction, "case": case,
                                 "y_true": y, "score": s, **{k: v[case] for k, v in cov.items()}})
    return rows
