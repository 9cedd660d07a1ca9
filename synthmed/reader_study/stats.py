"""Statistics of a reader study: exact binomial intervals and tests, AUC, agreement, equivalence (TOST).

Pure functions of numbers (no files, no MLflow). Every estimate is returned with its n and a 95 % interval. The
libraries do the arithmetic: scipy (`binomtest`, Clopper-Pearson, Welch, Mann-Whitney), scikit-learn
(`cohen_kappa_score`, `roc_auc_score`) and statsmodels (`fleiss_kappa`, `binom_tost`).

"Indistinguishable" is a claim of equivalence, never of a non-significant difference: it needs the two one-sided
tests (Schuirmann 1987) to reject |accuracy - 50 %| >= margin.
"""

from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np
from scipy import stats as st
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.proportion import binom_tost

ALPHA = 0.05  # two-sided level of every test and 1 - coverage of every interval
N_BOOT = 2000  # case-bootstrap resamples behind the kappa intervals
BOOT_SEED = 0  # fixed: the same responses give the same report


def proportion(k: int, n: int) -> dict:
    """k of n with its exact (Clopper-Pearson) 95 % interval."""
    if n < 1:
        return {"k": int(k), "n": int(n), "estimate": None, "ci95": [None, None]}
    ci = st.binomtest(int(k), int(n)).proportion_ci(1 - ALPHA, method="exact")
    return {"k": int(k), "n": int(n), "estimate": k / n, "ci95": [float(ci.low), float(ci.high)]}


def chance_test(k: int, n: int) -> dict:
    """Exact two-sided binomial test of k correct of n against 50 %."""
    return {"p_value": float(st.binomtest(int(k), int(n), 0.5).pvalue), "null": 0.5, "n": int(n)}


def equivalence(k: int, n: int, margin: float) -> dict:
    """Exact TOST: is the accuracy k/n within 50 % +- margin? Equivalent when both one-sided tests reject at ALPHA.

    The matching interval is the (1 - 2 ALPHA) = 90 % Clopper-Pearson interval: equivalence holds (up to the
    discreteness of the exact test) when it lies inside [0.5 - margin, 0.5 + margin].
    """
    if not 0 < margin < 0.5:
        raise ValueError(f"margin must be in (0, 0.5) (a share of readings, 0.10 = 10 points), got {margin}")
    p, p_low, p_upp = binom_tost(int(k), int(n), 0.5 - margin, 0.5 + margin)
    ci = st.binomtest(int(k), int(n)).proportion_ci(1 - 2 * ALPHA, method="exact")
    return {"margin": margin, "p_value": float(p), "p_lower": float(p_low), "p_upper": float(p_upp),
            "ci90": [float(ci.low), float(ci.high)], "equivalent": bool(p < ALPHA), "n": int(n)}


def auc(is_synth: np.ndarray, score: np.ndarray) -> dict:
    """ROC AUC of a "synthetic" score with the Hanley-McNeil (1982) 95 % interval.

    Args:
        is_synth: `[n]` bool truth.
        score: `[n]` higher = more confident the case is synthetic.
    """
    n1, n0 = int(is_synth.sum()), int((~is_synth).sum())
    if n1 == 0 or n0 == 0:
        return {"estimate": None, "ci95": [None, None], "n_synthetic": n1, "n_real": n0}
    a = float(roc_auc_score(is_synth, score))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a)) / (n1 * n0))
    z = st.norm.ppf(1 - ALPHA / 2)
    return {"estimate": a, "ci95": [max(0.0, a - z * se), min(1.0, a + z * se)], "n_synthetic": n1, "n_real": n0}


def synth_score(said_synth: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Confidence folded into one "synthetic" score on -5..5: +c for "synthetic" at confidence c, -c for "real"."""
    return np.where(said_synth, confidence, -confidence).astype(float)


def _percentile_ci(replicates: np.ndarray) -> list[float | None]:
    """Percentile 95 % interval of bootstrap replicates (undefined ones, NaN, dropped)."""
    values = replicates[np.isfinite(replicates)]
    if len(values) < len(replicates) // 2:
        return [None, None]
    return [float(np.quantile(values, ALPHA / 2)), float(np.quantile(values, 1 - ALPHA / 2))]


def resamples(n_cases: int) -> np.ndarray:
    """`[N_BOOT, n_cases]` case indices drawn with replacement (fixed seed: one report per set of responses)."""
    return np.random.default_rng(BOOT_SEED).integers(0, n_cases, (N_BOOT, n_cases))


def binary_kappa_batch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cohen's kappa of 0/1 answers `[B, n]` row by row, (po - pe) / (1 - pe); NaN where pe = 1. The bootstrap's
    vectorized form of `cohen_kappa_score` (2000 calls of which cost seconds)."""
    pa, pb = a.mean(1), b.mean(1)
    po, pe = (a == b).mean(1), pa * pb + (1 - pa) * (1 - pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pe < 1, (po - pe) / (1 - pe), np.nan)


def binary_fleiss_batch(matrices: np.ndarray) -> np.ndarray:
    """Fleiss' kappa of 0/1 answers `[B, n_cases, n_readers]` (Fleiss 1971, two categories); NaN where undefined."""
    k = matrices.shape[2]
    ones = matrices.sum(2)
    agree = (ones * (ones - 1) + (k - ones) * (k - ones - 1)) / (k * (k - 1))
    p1 = ones.mean(1) / k
    pe = p1 ** 2 + (1 - p1) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pe < 1, (agree.mean(1) - pe) / (1 - pe), np.nan)


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa; NaN when both readers gave one single answer throughout (kappa undefined)."""
    if len(np.unique(np.concatenate([a, b]))) < 2:
        return float("nan")
    return float(cohen_kappa_score(a, b))


def cohen_pairs(answers: dict[str, np.ndarray]) -> list[dict]:
    """Cohen's kappa of every reader pair on 0/1 "synthetic" answers `[n_cases]` (same case order), with a
    case-bootstrap 95 % CI."""
    out = []
    for r1, r2 in combinations(sorted(answers), 2):
        a, b = answers[r1], answers[r2]
        k = _kappa(a, b)
        idx = resamples(len(a))
        out.append({"readers": [r1, r2], "kappa": None if np.isnan(k) else k, "n": len(a),
                    "ci95": _percentile_ci(binary_kappa_batch(a[idx], b[idx]))})
    return out


def fleiss(matrix: np.ndarray) -> dict:
    """Fleiss' kappa over all readers, with a case-bootstrap 95 % CI.

    Args:
        matrix: `[n_cases, n_readers]` 0/1 ("synthetic") answers.
    """
    if matrix.shape[1] < 2:
        return {"kappa": None, "ci95": [None, None], "n_cases": matrix.shape[0], "n_readers": matrix.shape[1]}
    table, _ = aggregate_raters(matrix, n_cat=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = float(fleiss_kappa(table, method="fleiss"))
    return {"kappa": None if np.isnan(k) else k, "ci95": _percentile_ci(binary_fleiss_batch(matrix[resamples(len(matrix))])),
            "n_cases": int(matrix.shape[0]), "n_readers": int(matrix.shape[1])}


def plausibility(real: np.ndarray, synth: np.ndarray) -> dict:
    """Mean plausibility (1-5) of real vs synthetic cases: Welch 95 % CI of the difference, Mann-Whitney U test.

    Ratings are ordinal, so the test is rank-based; the mean difference is reported for reading, with its interval.
    """
    out = {"real": _mean(real), "synthetic": _mean(synth)}
    if len(real) < 2 or len(synth) < 2:
        return out | {"difference": None, "ci95": [None, None], "mann_whitney_p": None}
    diff = float(np.mean(synth) - np.mean(real))
    p = st.mannwhitneyu(synth, real, alternative="two-sided").pvalue
    if np.std(real) == 0 and np.std(synth) == 0:  # every rating equal within each group: no spread, no interval
        return out | {"difference": diff, "ci95": [diff, diff], "mann_whitney_p": float(p) if np.isfinite(p) else 1.0}
    with warnings.catch_warnings():  # one constant group is fine for Welch; scipy still warns about its moments
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = st.ttest_ind(synth, real, equal_var=False).confidence_interval(1 - ALPHA)
    return out | {"difference": diff, "ci95": [float(ci.low), float(ci.high)], "mann_whitney_p": float(p)}


def _mean(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {"mean": None, "n": 0, "ci95": [None, None]}
    if len(x) < 2 or np.std(x) == 0:
        return {"mean": float(np.mean(x)), "n": len(x), "ci95": [float(np.mean(x))] * 2}
    ci = st.ttest_1samp(x, 0).confidence_interval(1 - ALPHA)
    return {"mean": float(np.mean(x)), "n": len(x), "ci95": [float(ci.low), float(ci.high)]}


def verdict(acc: dict, chance: dict, equiv: dict) -> dict:
    """The sentence a report may print about one reader's accuracy vs chance (exact tests)."""
    return judge(acc["estimate"], chance["p_value"] < ALPHA, equiv["equivalent"], equiv["margin"])


def judge(estimate: float, different: bool, equivalent: bool, margin: float) -> dict:
    """Accuracy vs chance in words. Only a shown equivalence earns "indistinguishable"."""
    m = f"{margin * 100:g}"
    if different and estimate > 0.5:
        code = "above_chance_within_margin" if equivalent else "distinguishable"
        text = ("above chance, yet within the +-" + m + " point equivalence margin" if equivalent else
                "real and synthetic told apart: accuracy above 50 %")
    elif different:
        code, text = "below_chance", "accuracy below 50 %: readers systematically took one kind for the other"
    elif equivalent:
        code, text = "indistinguishable", f"indistinguishable within +-{m} points (equivalence shown)"
    else:
        code = "not_shown_to_differ"
        text = (f"not shown to differ from chance, and equivalence within +-{m} points not shown either "
                "(too few readings to say)")
    return {"code": code, "text": text}


def clustered_accuracy(correct: np.ndarray, margin: float) -> dict:
    """Pooled accuracy with readers and cases both treated as samples: a two-way bootstrap.

    Readings of one case by several readers are not independent (an easy case is easy for all), so the exact
    binomial interval over all readings is too narrow; resampling cases and readers independently (Obuchowski's
    multi-reader multi-case setting) gives an interval that covers both sources of variance. Equivalence: the 90 %
    interval inside 50 % +- margin (the interval form of TOST at 5 %).

    Args:
        correct: `[n_cases, n_readers]` 1 where the reader was right.
    """
    rng = np.random.default_rng(BOOT_SEED)
    n_cases, n_readers = correct.shape
    cases = rng.integers(0, n_cases, (N_BOOT, n_cases))
    readers = rng.integers(0, n_readers, (N_BOOT, n_readers))
    reps = correct[cases[:, :, None], readers[:, None, :]].mean(axis=(1, 2))
    ci95 = [float(np.quantile(reps, ALPHA / 2)), float(np.quantile(reps, 1 - ALPHA / 2))]
    ci90 = [float(np.quantile(reps, ALPHA)), float(np.quantile(reps, 1 - ALPHA))]
    different = not ci95[0] <= 0.5 <= ci95[1]
    equivalent = 0.5 - margin < ci90[0] and ci90[1] < 0.5 + margin
    return {"estimate": float(correct.mean()), "ci95": ci95, "ci90": ci90, "n_cases": n_cases,
            "n_readers": n_readers, "different": different, "equivalent": equivalent, "margin": margin,
            "method": f"two-way bootstrap over cases and readers ({N_BOOT} resamples, seed {BOOT_SEED})",
            "verdict": judge(float(correct.mean()), different, equivalent, margin)}


def reader_summary(is_synth: np.ndarray, said_synth: np.ndarray, confidence: np.ndarray, rating: np.ndarray,
                   margin: float) -> dict:
    """Every number of one reader (or of pooled readings).

    Args:
        is_synth: `[n]` truth per reading.
        said_synth: `[n]` the reader's "synthetic" answers.
        confidence: `[n]` 1-5.
        rating: `[n]` anatomical plausibility 1-5.
        margin: equivalence margin as a share (0.10 = 10 points).
    """
    correct = int((is_synth == said_synth).sum())
    n = len(is_synth)
    acc = proportion(correct, n)
    chance, equiv = chance_test(correct, n), equivalence(correct, n, margin)
    return {"n": n, "accuracy": acc, "chance_test": chance, "equivalence": equiv,
            "sensitivity": proportion(int((said_synth & is_synth).sum()), int(is_synth.sum())),
            "specificity": proportion(int((~said_synth & ~is_synth).sum()), int((~is_synth).sum())),
            "auc": auc(is_synth, synth_score(said_synth, confidence)),
            "plausibility": plausibility(rating[~is_synth].astype(float), rating[is_synth].astype(float)),
            "verdict": verdict(acc, chance, equiv)}
