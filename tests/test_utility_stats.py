"""The utility statistics against independent references: scikit-learn, statsmodels, brute-force scans and a naive
O(n1 * n0) DeLong written from the 1988 paper's definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, brier_score_loss, roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from synthmed.metrics import utility_stats as us


def _data(seed: int, n: int = 60, prevalence: float = 0.2, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    s = rng.normal(size=(3, n)) + 0.8 * y
    if ties:  # scores on a coarse grid: many ties, the case where mid-ranks and thresholds go wrong
        s = np.round(s * 2) / 2
    return y, s


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_auroc_and_auprc_equal_scikit_learn(seed, ties):
    y, s = _data(seed, ties=ties)
    np.testing.assert_allclose(us.auroc(y, s), [roc_auc_score(y, row) for row in s], rtol=1e-12)
    np.testing.assert_allclose(us.average_precision(y, s), [average_precision_score(y, row) for row in s], rtol=1e-12)


def test_balanced_accuracy_and_brier_equal_scikit_learn():
    y, s = _data(3)
    p = 1 / (1 + np.exp(-s))
    np.testing.assert_allclose(us.balanced_accuracy(y, p), [balanced_accuracy_score(y, r >= 0.5) for r in p])
    np.testing.assert_allclose(us.brier(y, p), [brier_score_loss(y, r) for r in p])


def _scan(y, s, spec=None, sens=None):
    """Every threshold (each distinct score and +inf), the best feasible value: the brute-force reference."""
    best = 0.0
    for t in [*np.unique(s), np.inf]:
        pred = s >= t
        se, sp = pred[y == 1].mean(), (~pred[y == 0]).mean()
        if spec is not None and sp >= spec:
            best = max(best, se)
        if sens is not None and se >= sens:
            best = max(best, sp)
    return best


@pytest.mark.parametrize("seed,ties,n", [(4, False, 60), (5, True, 60), (6, True, 30), (7, False, 100)])
def test_operating_points_equal_a_brute_force_threshold_scan(seed, ties, n):
    y, s = _data(seed, n=n, ties=ties)
    sens, tp = us.sens_at_spec(y, s, 0.9)
    spec, tn = us.spec_at_sens(y, s, 0.9)
    np.testing.assert_allclose(sens, [_scan(y, row, spec=0.9) for row in s])
    np.testing.assert_allclose(spec, [_scan(y, row, sens=0.9) for row in s])
    np.testing.assert_array_equal(tp, np.round(sens * y.sum()))
    np.testing.assert_array_equal(tn, np.round(spec * (1 - y).sum()))


@pytest.mark.parametrize("k,n", [(0, 7), (3, 7), (7, 7), (18, 40)])
def test_clopper_pearson_equals_statsmodels_beta_interval(k, n):
    np.testing.assert_allclose(us.clopper_pearson(k, n), proportion_confint(k, n, alpha=0.05, method="beta"),
                               atol=1e-9)


def _naive_delong(y, s):
    """DeLong et al. (1988) as written: psi(x, y) = 1, 1/2, 0; V10, V01 by explicit double loops."""
    pos, neg = s[:, y == 1], s[:, y == 0]
    psi = lambda a, b: 1.0 if a > b else 0.5 if a == b else 0.0
    v10 = np.array([[np.mean([psi(p, q) for q in neg[m]]) for p in pos[m]] for m in range(len(s))])
    v01 = np.array([[np.mean([psi(p, q) for p in pos[m]]) for q in neg[m]] for m in range(len(s))])
    k, n1, n0 = len(s), pos.shape[1], neg.shape[1]
    s10 = np.array([[np.sum((v10[a] - v10[a].mean()) * (v10[b] - v10[b].mean())) / (n1 - 1) for b in range(k)]
                    for a in range(k)])
    s01 = np.array([[np.sum((v01[a] - v01[a].mean()) * (v01[b] - v01[b].mean())) / (n0 - 1) for b in range(k)]
                    for a in range(k)])
    return v10.mean(1), s10 / n1 + s01 / n0


@pytest.mark.parametrize("seed,ties", [(8, False), (9, True)])
def test_delong_covariance_equals_the_naive_placement_computation(seed, ties):
    y, s = _data(seed, n=50, ties=ties)
    aucs, cov = us.delong(y, s)
    ref_aucs, ref_cov = _naive_delong(y, s)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)
    assert abs(cov[0, 1]) > 0  # correlated by the shared cases: the off-diagonal is really exercised


def test_delong_difference_ci_covers_and_separates():
    y, s = _data(10, n=200)
    same = us.delong_difference(y, s[0], s[0])
    assert same.estimate == 0 and same.p_value == 1.0 and not same.positive
    better = us.delong_difference(y, s[0] + 3.0 * y, s[0])  # far better scores on the same cases
    assert better.positive and better.p_value < 1e-3 and better.n == 200


def test_paired_bootstrap_gain_over_best_baseline():
    y, s = _data(11, n=120)
    rng = np.random.default_rng(0)
    base = np.stack([s[0] + 0.3 * rng.normal(size=(4, 120)) for _ in range(2)])  # 2 baselines x 4 seeds
    copy = base[1:2] + 1e-3 * rng.normal(size=(1, 4, 120))  # a copy of the second baseline
    good = base[1:2] + 2.0 * y  # clearly better on every seed
    scores = np.concatenate([base, copy, good])  # [4 regimes, 4 seeds, N]
    est, lo, hi = us.paired_bootstrap(y, scores, us.gain_over_best(2, [0, 1]), n_boot=300)
    assert lo <= 0 <= hi or hi < 0  # copying a baseline is never a gain
    est, lo, hi = us.paired_bootstrap(y, scores, us.gain_over_best(3, [0, 1]), n_boot=300)
    auc = us.auroc(y, scores.reshape(-1, 120)).reshape(4, 4).mean(1)
    assert est == pytest.approx(auc[3] - auc[:2].max()) and lo > 0
