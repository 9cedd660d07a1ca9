"""Statistics of the downstream-utility harness: discrimination, calibration and paired intervals.

Scores are rare-class scores (higher = more likely class 1); labels are 0/1. Every function that takes a matrix of
scores ``[M, N]`` (M classifiers or seeds, N test cases) works row by row, so a bootstrap replicate scores all
regimes and seeds in one call.

AUROC is the Mann-Whitney statistic; its variance and covariance between classifiers scored on the same cases come
from the placement values of DeLong, DeLong & Clarke-Pearson (Biometrics 44(3), 1988), computed with ranks as in
Sun & Xu (IEEE Signal Processing Letters 21(11), 2014). Sensitivity at a specificity is an exact threshold scan
(no interpolation), with the Clopper-Pearson (1934) interval of the sensitivity at the chosen threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95  # every interval: two-sided 95 %


def _check(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``[N]`` as bool and scores as ``[M, N]`` float; both classes must be present."""
    y = np.asarray(y).astype(int)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if y.ndim != 1 or s.shape[1] != y.shape[0]:
        raise ValueError(f"labels [N] and scores [M, N] must share N, got {y.shape} and {s.shape}")
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"labels must be 0/1, got {np.unique(y)[:5]}")
    if y.min() == y.max():
        raise ValueError("both classes must be present in the test cases (an AUROC needs positives and negatives)")
    return y.astype(bool), s


def auroc(y, scores) -> np.ndarray:
    """Area under the ROC curve of each row of ``scores`` ``[M, N]`` (or ``[N]``): P(score+ > score-) + ties / 2.

    Returns:
        ``[M]``.
    """
    y, s = _check(y, scores)
    ranks = stats.rankdata(s, axis=1)  # mid-ranks: a tie counts one half
    n1, n0 = y.sum(), (~y).sum()
    return (ranks[:, y].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def average_precision(y, scores) -> np.ndarray:
    """Area under the precision-recall curve as the step sum over distinct thresholds, sum (R_k - R_k-1) P_k
    (scikit-learn's ``average_precision_score``; no interpolation, which overstates it). ``[M]``."""
    y, s = _check(y, scores)
    out = np.empty(s.shape[0])
    for m, row in enumerate(s):
        order = np.argsort(-row, kind="mergesort")
        hits, sorted_scores = y[order], row[order]
        last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(row) - 1]  # last index of each distinct score
        tp = np.cumsum(hits)[last]
        precision, recall = tp / (last + 1), tp / y.sum()
        out[m] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    return out


def sens_at_spec(y, scores, spec: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Highest sensitivity over all thresholds (positive when score >= t) whose specificity is >= ``spec``.

    The best threshold lies just above the (m+1)-th highest negative score, m = floor((1 - spec) * n_neg): then
    exactly the negatives allowed to be false positives score at or above it.

    Returns:
        (sensitivity ``[M]``, true positives ``[M]`` int): the count feeds the Clopper-Pearson interval.
    """
    y, s = _check(y, scores)
    neg = -np.sort(-s[:, ~y], axis=1)  # descending
    m = int(np.floor((1.0 - spec) * neg.shape[1] + 1e-9))  # false positives allowed (1e-9: 0.1 * 10 is 0.999...)
    if m >= neg.shape[1]:
        tp = np.full(s.shape[0], y.sum())
    else:
        tp = (s[:, y] > neg[:, m:m + 1]).sum(1)
    return tp / y.sum(), tp


def spec_at_sens(y, scores, sens: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Highest specificity over thresholds whose sensitivity is >= ``sens``: the threshold is the k-th highest
    positive score, k = ceil(sens * n_pos). Returns (specificity ``[M]``, true negatives ``[M]``)."""
    y, s = _check(y, scores)
    pos = -np.sort(-s[:, y], axis=1)
    k = max(int(np.ceil(sens * pos.shape[1] - 1e-9)), 1)
    tn = (s[:, ~y] < pos[:, k - 1:k]).sum(1)
    return tn / (~y).sum(), tn


def balanced_accuracy(y, probs, threshold: float = 0.5) -> np.ndarray:
    """Mean of sensitivity and specificity at ``threshold`` on probabilities ``[M, N]``. ``[M]``."""
    y, p = _check(y, probs)
    pred = p >= threshold
    return 0.5 * (pred[:, y].mean(1) + (~pred[:, ~y]).mean(1))


def brier(y, probs) -> np.ndarray:
    """Mean squared error of the probabilities against the 0/1 labels. ``[M]``."""
    y, p = _check(y, probs)
    return ((p - y[None].astype(float)) ** 2).mean(1)


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact binomial interval of a proportion k / n (Clopper & Pearson, Biometrika 26(4), 1934)."""
    if n < 1:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


# ------------------------------------------------------------------------------------------------------- DeLong
def delong(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs ``[M]`` and their covariance ``[M, M]`` for classifiers scored on the same cases.

    Placement values (DeLong 1988): V10_i = share of negatives that positive i out-scores (ties 1/2), V01_j = share
    of positives that out-score negative j; cov = S10 / n1 + S01 / n0 with S the sample covariances of V10, V01.
    """
    y, s = _check(y, scores)
    pos, neg = s[:, y], s[:, ~y]
    n1, n0 = pos.shape[1], neg.shape[1]
    r_all = stats.rankdata(np.concatenate([pos, neg], 1), axis=1)
    r_pos, r_neg = stats.rankdata(pos, axis=1), stats.rankdata(neg, axis=1)
    v10 = (r_all[:, :n1] - r_pos) / n0  # negatives below positive i (mid-rank differences count ties as 1/2)
    v01 = 1.0 - (r_all[:, n1:] - r_neg) / n1  # positives above negative j
    aucs = v10.mean(1)
    cov = np.atleast_2d(np.cov(v10)) / n1 + np.atleast_2d(np.cov(v01)) / n0
    return aucs, cov


@dataclass
class Difference:
    """A paired difference a - b with its 95 % interval and a two-sided p-value of 'no difference'."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int  # test cases behind it

    @property
    def positive(self) -> bool:
        """Only an interval above 0 is a gain; one that contains 0 shows no difference, not equality."""
        return self.ci_low > 0


def delong_difference(y, a, b, level: float = LEVEL) -> Difference:
    """DeLong test of AUROC(a) - AUROC(b) for two score vectors ``[N]`` on the same cases (normal approximation)."""
    aucs, cov = delong(y, np.stack([np.asarray(a), np.asarray(b)]))
    diff, var = aucs[0] - aucs[1], cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    se = float(np.sqrt(max(var, 0.0)))
    z = stats.norm.ppf(0.5 + level / 2)
    p = float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else float(diff == 0)  # identical scores: p = 1
    return Difference(float(diff), float(diff - z * se), float(diff + z * se), p, len(np.asarray(y)))


# ---------------------------------------------------------------------------------------------------- bootstrap
Metric = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (y [N], scores [M, N]) -> [M]


def bootstrap_values(y, scores: np.ndarray, metric: Metric = auroc, n_boot: int = 1000,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A metric on the data as observed and on each replicate of a paired bootstrap of test cases and seeds.

    Each replicate draws the test cases with replacement within each class (so both classes stay present, and every
    regime and seed sees the same cases: the pairing) and the seeds with replacement (the seed-to-seed spread of
    training). The same ``seed`` gives the same replicates for every metric.

    Args:
        y: labels ``[N]``.
        scores: ``[R, S, N]``: regimes x seeds x test cases.
        metric: the per-row metric.
        n_boot: replicates.
        seed: of the resampling.

    Returns:
        (observed ``[R, S]``, replicates ``[n_boot, R, S]``).
    """
    y = np.asarray(y).astype(int)
    r, s, n = scores.shape
    flat = lambda idx, seeds: metric(y[idx], scores[:, seeds][..., idx].reshape(-1, len(idx))).reshape(r, len(seeds))
    rng = np.random.default_rng(seed)
    pos, neg = np.nonzero(y == 1)[0], np.nonzero(y == 0)[0]
    reps = np.empty((n_boot, r, s))
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        reps[b] = flat(idx, rng.integers(0, s, s))
    return flat(np.arange(n), np.arange(s)), reps


def interval(observed: np.ndarray, reps: np.ndarray, statistic: Callable[[np.ndarray], float],
             level: float = LEVEL) -> tuple[float, float, float]:
    """(estimate, ci_low, ci_high) of ``statistic`` (``[R, S]`` -> number): percentile interval of the replicates."""
    values = np.array([statistic(v) for v in reps])
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(statistic(observed)), float(lo), float(hi)


def paired_bootstrap(y, scores: np.ndarray, statistic: Callable[[np.ndarray], float], metric: Metric = auroc,
                     n_boot: int = 1000, seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """Estimate and percentile interval of ``statistic`` of ``metric`` over a paired bootstrap of cases and seeds
    (``bootstrap_values``; scores ``[R, S, N]``)."""
    return interval(*bootstrap_values(y, scores, metric, n_boot, seed), statistic, level)


def gain_over_best(target: int, baselines: list[int]) -> Callable[[np.ndarray], float]:
    """Statistic for ``paired_bootstrap``: mean over seeds of regime ``target`` minus the best baseline's mean.

    The best baseline is re-chosen in every replicate, so the interval carries the cost of picking the best of
    several real baselines on the same test cases (a copier must not look useful because one baseline was lucky).
    """
    return lambda values: float(values[target].mean() - max(values[b].mean() for b in baselines))


def mean_of(regime: int) -> Callable[[np.ndarray], float]:
    """Statistic for ``paired_bootstrap``: the mean over seeds of one regime."""
    return lambda values: float(values[regime].mean())


def sens_at_spec90(y, scores) -> np.ndarray:
    """``sens_at_spec`` at 0.90 as a bootstrap metric. ``[M]``."""
    return sens_at_spec(y, scores, 0.9)[0]
