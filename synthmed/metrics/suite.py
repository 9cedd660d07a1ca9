"""The metric suite: the one object the evaluation callback and ``synthmed evaluate`` call.

``MetricSuite(...)(fake, real, train=...)`` returns values under the keys of ``names.py`` and provenance tags.
Inception-feature metrics are skipped, not fatal, when the weights file is absent (offline machines): a warning
names the file and folder expected, ``tags["fid.skipped"]`` holds the reason, and the other metrics still run.
``fd_domain`` and ``cond_accuracy`` read encoders trained once on the training split (synthmed/metrics/domain.py).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from synthmed.metrics import domain as D
from synthmed.metrics import fid as fidlib
from synthmed.metrics import names, nonfinite
from synthmed.metrics.cache import ReferenceCache, tensor_digest
from synthmed.metrics.conditioning import cond_metrics
from synthmed.metrics.diversity import ms_ssim_diversity
from synthmed.metrics.features import density_coverage, kid, precision_recall
from synthmed.metrics.inception import VALID_DIMS, InceptionExtractor
from synthmed.metrics.lesions import BRAIN_WINDOW_HU, lesion_metrics
from synthmed.metrics.memorization import memorization

log = logging.getLogger(__name__)

METRICS = ("fid", "kid", "precision_recall", "density_coverage", "ms_ssim_diversity", "memorization", "fd_domain",
           "cond_accuracy")
FEATURE_METRICS = ("fid", "kid", "precision_recall", "density_coverage")  # need the Inception weights
TRAIN_METRICS = ("memorization", "fd_domain", "cond_accuracy")  # need train=<training images>


@dataclass
class SuiteResult:
    """Values (metric key -> float), provenance tags (str -> str) and artifacts for the caller to log.

    ``artifacts["memorization"]`` (and ``"memorization_feature"``) hold a ``MemorizationResult`` whose
    ``top_pairs`` index the closest (sample, training image) pairs.
    """

    values: dict[str, float]
    tags: dict[str, str]
    artifacts: dict[str, Any] = field(default_factory=dict)


class MetricSuite:
    """Computes the configured metrics of generated samples against real (held-out) and training images.

    Args:
        metrics: names from ``METRICS``.
        fid_weights: Inception weights file; None = pytorch-fid's ``$TORCH_HOME/hub/checkpoints/`` file.
        fid_dims: Inception feature dim (64, 192, 768, 2048); 2048 is the comparable standard.
        min_samples: FID refuses fewer fake or real samples (images or volumes) than this.
        batch_size: images per Inception forward pass.
        device: where Inception runs.
        cache_dir: reference-feature cache folder (None: no cache).
        kid_subset_size: KID subset size, clipped to the sample counts.
        pr_k: k of the k-NN manifolds for precision/recall.
        bootstrap: FID bootstrap resamples for a 95% interval (0: off, else >= 2).
        seed: seeds KID subsets, diversity pairs and the bootstrap.
        dc_k: k for density/coverage (5 in Naeem et al.).
        memorization_quantile: calibration quantile of held-out-to-train distances (expected rate without copying).
        diversity_pairs: random pairs for MS-SSIM diversity.
        max_slices: 3D only, slices per volume and plane fed to Inception (None: all).
        progress: tqdm bars during feature extraction.
        domain_channels: channels per stage of the in-domain encoders (fd_domain dims: twice their sum).
        domain_steps: optimizer steps of each in-domain encoder (trained once per training set, then cached).
        domain_batch_size: images per encoder training step.
        domain_lr: encoder learning rate.
        domain_seed: encoder initialization and batch draws.
        cond_age_bins: edges (years) of the per-bin ``val/cond_age_mae``.
        lesion_window_hu: [lo, hi] HU, the display window through which a translator's lesion reader reads CT
            targets (``lesion_preservation``); None = the full range. Targets in other units are read unwindowed.
    """

    def __init__(self, metrics: Sequence[str] = ("fid", "ms_ssim_diversity"), fid_weights: str | None = None,
                 fid_dims: int = 2048, min_samples: int = 2, batch_size: int = 50, device: str = "cpu",
                 cache_dir: str | None = None, kid_subset_size: int = 100, pr_k: int = 3, bootstrap: int = 0,
                 seed: int = 0, dc_k: int = 5, memorization_quantile: float = 0.05, diversity_pairs: int = 100,
                 max_slices: int | None = None, progress: bool = False, domain_channels: Sequence[int] = (8, 16, 32),
                 domain_steps: int = 400, domain_batch_size: int = 32, domain_lr: float = 5e-3, domain_seed: int = 0,
                 cond_age_bins: Sequence[float] = (20, 45, 70, 90),
                 lesion_window_hu: Sequence[float] | None = BRAIN_WINDOW_HU):
        _check_names(metrics)
        _require(fid_dims in VALID_DIMS, f"fid_dims must be one of {VALID_DIMS}, got {fid_dims}")
        _require(min_samples >= 2, f"min_samples must be >= 2 (a covariance needs two samples), got {min_samples}")
        _require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
        _require(kid_subset_size >= 2, f"kid_subset_size must be >= 2, got {kid_subset_size}")
        _require(pr_k >= 1 and dc_k >= 1, f"pr_k and dc_k must be >= 1, got {pr_k}, {dc_k}")
        _require(bootstrap == 0 or bootstrap >= 2, f"bootstrap must be 0 or >= 2, got {bootstrap}")
        _require(0 < memorization_quantile < 1, f"memorization_quantile must be in (0, 1), got {memorization_quantile}")
        _require(max_slices is None or max_slices >= 1, f"max_slices must be None or >= 1, got {max_slices}")
        bins = [float(b) for b in cond_age_bins]
        _require(len(bins) >= 2 and all(a < b for a, b in zip(bins, bins[1:])),
                 f"cond_age_bins must be >= 2 increasing edges, got {bins}")
        self.metrics = tuple(dict.fromkeys(metrics))
        self.fid_weights, self.fid_dims, self.min_samples = fid_weights, fid_dims, min_samples
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self.cache = ReferenceCache(cache_dir) if cache_dir else None
        self.kid_subset_size, self.pr_k, self.dc_k = kid_subset_size, pr_k, dc_k
        self.bootstrap, self.seed = bootstrap, seed
        self.memorization_quantile, self.diversity_pairs = memorization_quantile, diversity_pairs
        self.max_slices = max_slices
        self._extractor: InceptionExtractor | None = None
        self._memory: dict[str, fidlib.FeatureSet] = {}  # reference features of this process, by cache key
        self._warned = False
        self._real_diversity: dict[tuple, float] = {}  # MS-SSIM diversity of real sets, by content digest and n
        settings = D.EncoderSettings(tuple(domain_channels), domain_steps, domain_batch_size, domain_lr, domain_seed)
        self.encoders = D.EncoderBank(settings, cache_dir, device)
        self.cond_age_bins = tuple(bins)
        if lesion_window_hu is not None:
            window = [float(v) for v in lesion_window_hu]
            _require(len(window) == 2 and window[0] < window[1],
                     f"lesion_window_hu must be [lo, hi] HU with lo < hi, or null, got {list(lesion_window_hu)}")
            lesion_window_hu = tuple(window)
        self.lesion_window_hu = lesion_window_hu

    def with_metrics(self, metrics: Sequence[str]) -> MetricSuite:
        """The same suite computing `metrics` instead: it shares the loaded Inception network, the reference
        features already extracted and the in-domain encoders (the final evaluation after training)."""
        _check_names(metrics)
        other = copy.copy(self)
        other.metrics = tuple(dict.fromkeys(metrics))
        return other

    @property
    def needs_train(self) -> bool:
        """Whether ``__call__`` needs ``train=`` (the training images): callers load them only then."""
        return any(m in TRAIN_METRICS for m in self.metrics)

    @property
    def needs_cond(self) -> bool:
        """Whether ``__call__`` reads ``train_cond`` (and, for cond_accuracy, ``cond`` and ``real_cond``)."""
        return "fd_domain" in self.metrics or "cond_accuracy" in self.metrics

    # ------------------------------------------------------------------------------------------------ entry point
    @torch.no_grad()
    def __call__(self, fake: Tensor, real: Tensor, *, train: Tensor | None = None, ref_key: str | None = None,
                 cond: dict[str, Tensor] | None = None, train_cond: dict[str, Tensor] | None = None,
                 real_cond: dict[str, Tensor] | None = None, fingerprint: str | None = None) -> SuiteResult:
        """Evaluate ``fake`` against ``real``.

        Args:
            fake: generated ``[B, C, H, W]`` or ``[B, C, H, W, D]`` in [-1, 1].
            real: held-out real images, same layout (the FID reference and the memorization calibration set).
            train: training images, same shape as ``fake`` per item; needed by ``TRAIN_METRICS``.
            ref_key: identifies ``real`` (dataset fingerprint + split) in the reference cache.
            cond: what each fake sample was requested with, e.g. ``{"label": [B] int, "age": [B], "sex": [B]}``;
                None (unconditional samples) skips cond_accuracy with a tag.
            train_cond: the same keys for the training images, ``[N]`` each: what the encoders learn. Pass it
                whenever the data has labels or covariates: fd_domain's encoder learns them too.
            real_cond: the true conditions of ``real``, ``[M]`` each: the ``*_real`` ceilings of cond_accuracy.
            fingerprint: the data set's fingerprint, names the encoder cache files (the key is content-based).
        """
        _check_pair(fake, real, train, [m for m in self.metrics if m in TRAIN_METRICS])
        bad = nonfinite.count_nonfinite(fake)
        if bad:  # never a reassuring number (e.g. memorization 0.0) for a diverged model's samples
            tags = {"nonfinite": nonfinite.nonfinite_tag(bad, len(fake))}
            return SuiteResult(nonfinite.nan_values(self.metrics), tags)
        result = SuiteResult({}, {})
        feats = self._features(fake, real, train, ref_key, result)
        if feats is not None:
            self._feature_metrics(*feats[:2], result)
        if "ms_ssim_diversity" in self.metrics:
            self._diversity(fake, real, result)
        if "memorization" in self.metrics:
            self._memorization(fake, real, train, feats, result)
        digest = tensor_digest(train) if self.needs_cond else None  # hashed once for both encoders
        if "fd_domain" in self.metrics:
            self._fd_domain(fake, real, train, train_cond, fingerprint, digest, result)
        if "cond_accuracy" in self.metrics and cond is None:
            result.tags["cond_accuracy.skipped"] = "no cond: unconditional samples, or the caller passed none"
        elif "cond_accuracy" in self.metrics:
            values, tags = cond_metrics(self.encoders, fake, cond, train, train_cond, real=real, real_cond=real_cond,
                                        age_bins=self.cond_age_bins, fingerprint=fingerprint, digest=digest,
                                        batch_size=self.batch_size)
            result.values |= values
            result.tags |= tags
        return result

    def lesion_preservation(self, outputs: Tensor, input_labels: Tensor, train_targets: Tensor,
                            train_labels: Tensor, intensity: dict, real: Tensor | None = None,
                            fingerprint: str | None = None) -> tuple[dict[str, float], dict[str, str]]:
        """A translator's lesion preserved / appeared rates (n, Wilson 95 % intervals) read by a lesion reader
        trained on the real target-domain images ``train_targets`` and their ``train_labels`` (this suite's encoder
        settings and cache), through ``lesion_window_hu``; see ``synthmed.metrics.lesions.lesion_metrics``."""
        return lesion_metrics(self.encoders, outputs, input_labels, train_targets, train_labels, intensity,
                              self.lesion_window_hu, real, fingerprint)

    # ------------------------------------------------------------------------------------------------- features
    def _features(self, fake, real, train, ref_key, result):
        """(fake, real, train-or-None) FeatureSets, or None when no metric needs them or the weights are absent."""
        wanted = [m for m in self.metrics if m in FEATURE_METRICS or m == "memorization"]
        if not wanted:
            return None
        try:
            extractor = self.extractor()
        except FileNotFoundError as err:
            if not self._warned:  # once per suite, not at every validation epoch
                log.warning("Inception-feature metrics skipped (%s): %s", ", ".join(wanted), err)
                self._warned = True
            result.tags |= {(f"{m}.skipped" if m != "memorization" else "memorization_feature.skipped"): str(err)
                            for m in wanted}
            return None
        if "fid" in self.metrics:  # refuse before spending minutes on Inception
            fidlib.check_min_samples(fake.shape[0], real.shape[0], self.min_samples)
        fake_fs = self._extract(fake)
        real_fs = self._reference(real, ref_key, "real")
        train_fs = self._reference(train, None, "train") if "memorization" in self.metrics else None
        result.tags |= {f"fid.{k}": v for k, v in extractor.provenance.items()}
        result.tags |= {"fid.n_fake": str(fake.shape[0]), "fid.n_real": str(real.shape[0]),
                        "fid.mode": "2.5d (axial, coronal, sagittal; mean)" if fake.ndim == 5 else "2d"}
        if fake.ndim == 5:
            result.tags["fid.slices_per_plane"] = "all" if self.max_slices is None else str(self.max_slices)
        return fake_fs, real_fs, train_fs

    def extractor(self) -> InceptionExtractor:
        """The Inception extractor, built once (raises FileNotFoundError when the weights are absent)."""
        if self._extractor is None:
            self._extractor = InceptionExtractor(self.fid_weights, self.fid_dims, self.device)
        return self._extractor

    def _extract(self, images: Tensor) -> fidlib.FeatureSet:
        return fidlib.extract_features(self.extractor(), images, self.batch_size, self.max_slices, self.progress)

    def _reference(self, images: Tensor, ref_key: str | None, role: str) -> fidlib.FeatureSet:
        """Features of a real set, from memory, then the disk cache, then Inception (and stored)."""
        fields = {"role": role, "ref_key": ref_key or "", "digest": tensor_digest(images), "n": images.shape[0],
                  "max_slices": str(self.max_slices), **self.extractor().provenance}
        key = ReferenceCache.key(fields)
        if key in self._memory:
            return self._memory[key]
        hit = self.cache.load(key) if self.cache else None
        feats = fidlib.FeatureSet.from_arrays(hit) if hit is not None else self._extract(images)
        if self.cache and hit is None:
            self.cache.save(key, feats.to_arrays(), fields)
        self._memory[key] = feats
        while len(self._memory) > 4:  # real + train of the current and a previous dataset, no more
            self._memory.pop(next(iter(self._memory)))
        return feats

    def _feature_metrics(self, fake: fidlib.FeatureSet, real: fidlib.FeatureSet, result: SuiteResult) -> None:
        v = result.values
        if "fid" in self.metrics:
            v |= fidlib.fid_values(fake, real)
            if self.bootstrap:
                v[names.FID_CI_LOW], v[names.FID_CI_HIGH] = fidlib.bootstrap_fid(fake, real, self.bootstrap, self.seed)
                result.tags["fid.bootstrap"] = f"{self.bootstrap} resamples of both sets, 95% percentile interval"
        f_fake, f_real = fake.per_sample(), real.per_sample()
        if "kid" in self.metrics:
            v[names.KID], v[names.KID_STD] = kid(f_real, f_fake, subset_size=self.kid_subset_size, seed=self.seed)
            result.tags["kid.subset_size"] = str(min(self.kid_subset_size, f_real.shape[0], f_fake.shape[0]))
        if "precision_recall" in self.metrics:
            v[names.PRECISION], v[names.RECALL] = precision_recall(f_real, f_fake, self.pr_k)
        if "density_coverage" in self.metrics:
            v[names.DENSITY], v[names.COVERAGE] = density_coverage(f_real, f_fake, self.dc_k)

    # -------------------------------------------------------------------------------------------------- diversity
    def _diversity(self, fake: Tensor, real: Tensor, result: SuiteResult) -> None:
        """MS-SSIM diversity of the samples and, as its target, of as many real images by the same code (same pair
        draw, same seed), plus their distance: noise (~0) and collapse (~1) are both far from real anatomy."""
        comparable = real.shape[1:] == fake.shape[1:] and len(real) >= 2
        n = min(len(fake), len(real)) if comparable else len(fake)
        value, cfg = ms_ssim_diversity(fake[:n], self.diversity_pairs, data_range=2.0, seed=self.seed)
        result.values[names.MS_SSIM_DIVERSITY] = value
        result.tags |= {"ms_ssim_diversity.config": str(cfg), "ms_ssim_diversity.n_pairs": str(self.diversity_pairs),
                        "ms_ssim_diversity.n": str(n)}
        if not comparable:
            result.tags["ms_ssim_diversity_real.skipped"] = (
                f"real images {tuple(real.shape)} are not {len(fake)} x {tuple(fake.shape[1:])}-shaped (>= 2 needed)")
            return
        key = (tensor_digest(real[:n]), n, self.diversity_pairs, self.seed)
        if key not in self._real_diversity:  # the same real images at every validation: computed once
            self._real_diversity[key] = ms_ssim_diversity(real[:n], self.diversity_pairs, data_range=2.0,
                                                          seed=self.seed)[0]
        real_value = self._real_diversity[key]
        result.values[names.MS_SSIM_DIVERSITY_REAL] = real_value
        result.values[names.MS_SSIM_DIVERSITY_GAP] = abs(value - real_value)

    # -------------------------------------------------------------------------------------------------- fd_domain
    def _fd_domain(self, fake, real, train, train_cond, fingerprint, digest, result: SuiteResult) -> None:
        n_fake, n_real = fake.shape[0], real.shape[0]
        if min(n_fake, n_real) < self.min_samples:
            # fd_domain is in the default suite: a data set with one val volume must not fail the run. The number
            # is left out with the reason (a distance from fewer samples is not comparable), never made up.
            result.tags["fd_domain.skipped"] = (f"needs at least min_samples={self.min_samples} fake and real "
                                                f"samples, got {n_fake} and {n_real}")
            return
        encoder = self.encoders.get("domain", train, train_cond, fingerprint, digest)
        result.values[names.FD_DOMAIN] = D.fd_domain(encoder, fake, real, self.batch_size)
        result.tags |= encoder.provenance("fd_domain") | {"fd_domain.n_fake": str(n_fake),
                                                           "fd_domain.n_real": str(n_real)}

    # ----------------------------------------------------------------------------------------------- memorization
    def _memorization(self, fake, real, train, feats, result: SuiteResult) -> None:
        """Pixel space always (the headline rate); feature space too when Inception is available."""
        q = self.memorization_quantile
        if len(real) < 2:  # a tiny held-out split cannot calibrate the threshold: skip this metric, not the run
            result.tags["memorization.skipped"] = f"needs >= 2 held-out real images to calibrate, got {len(real)}"
            return
        pix = memorization(fake, train, real, quantile=q)
        result.values[names.MEMORIZATION_RATE] = pix.rate
        result.artifacts["memorization"] = pix
        result.tags |= {"memorization.quantile": str(q), "memorization.threshold": f"{pix.threshold:.6g}",
                        "memorization.space": "pixel RMS distance; feature rate in " + names.MEMORIZATION_RATE_FEATURE}
        if feats is not None:
            fake_fs, real_fs, train_fs = feats
            ft = memorization(fake_fs.per_sample(), train_fs.per_sample(), real_fs.per_sample(), quantile=q)
            result.values[names.MEMORIZATION_RATE_FEATURE] = ft.rate
            result.artifacts["memorization_feature"] = ft


def _check_names(metrics: Sequence[str]) -> None:
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"metrics: unknown {unknown}; valid names are {list(METRICS)}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_pair(fake: Tensor, real: Tensor, train: Tensor | None, train_metrics: Sequence[str]) -> None:
    if fake.ndim not in (4, 5) or real.ndim != fake.ndim or real.shape[1] != fake.shape[1]:
        raise ValueError(f"fake/real: expected [B, C, H, W(, D)] with equal C and ndim, got {tuple(fake.shape)}, "
                         f"{tuple(real.shape)}")
    if train_metrics and train is None:
        raise ValueError(f"train: metrics {list(train_metrics)} need train=<training images>")
    if train is not None and train.shape[1:] != fake.shape[1:]:
        raise ValueError(f"train: expected items of shape {tuple(fake.shape[1:])}, got {tuple(train.shape[1:])}")
    if train_metrics and real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real: {list(train_metrics)} need items of shape {tuple(fake.shape[1:])}, "
                         f"got {tuple(real.shape[1:])}")
