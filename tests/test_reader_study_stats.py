"""Reader-study statistics against independent references and known answers (hand formulas, published examples,
other libraries than the one the code calls)."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
from scipy import stats as st
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from synthmed.reader_study import stats as S


@pytest.mark.parametrize("k,n", [(0, 10), (7, 10), (31, 50), (59, 100), (100, 100)])
def test_clopper_pearson_matches_beta_quantiles(k, n):
    got = S.proportion(k, n)
    low = 0.0 if k == 0 else st.beta.ppf(0.025, k, n - k + 1)  # Clopper & Pearson 1934
    high = 1.0 if k == n else st.beta.ppf(0.975, k + 1, n - k)
    assert got["estimate"] == k / n and got["n"] == n
    assert got["ci95"] == pytest.approx([low, high], abs=1e-9)
    assert got["ci95"] == pytest.approx(list(proportion_confint(k, n, 0.05, method="beta")), abs=1e-9)


@pytest.mark.parametrize("k,n", [(7, 10), (31, 50), (59, 100), (50, 100)])
def test_binomial_test_is_the_exact_two_sided_sum(k, n):
    pmf = [math.comb(n, i) * 0.5 ** n for i in range(n + 1)]
    p = sum(q for q in pmf if q <= pmf[k] * (1 + 1e-7))  # sum of outcomes no more likely than the observed one
    assert S.chance_test(k, n)["p_value"] == pytest.approx(min(1.0, p), rel=1e-9)


def test_auc_is_the_mann_whitney_share_of_ordered_pairs():
    rng = np.random.default_rng(0)
    truth = rng.random(60) < 0.5
    score = np.where(rng.random(60) < 0.7, truth, ~truth) * rng.integers(1, 6, 60)
    pairs = [(a > b) + 0.5 * (a == b) for a, b in product(score[truth], score[~truth])]
    u = st.mannwhitneyu(score[truth], score[~truth]).statistic
    got = S.auc(truth, score)
    assert got["estimate"] == pytest.approx(np.mean(pairs)) and got["estimate"] == pytest.approx(u / len(pairs))
    assert got["n_synthetic"] == truth.sum() and got["n_real"] == (~truth).sum()


def test_auc_interval_covers_about_95_percent():
    """Hanley-McNeil's interval over 400 simulated studies (true AUC 0.8 via normal scores, 40 + 40 cases)."""
    rng, true_auc, hits = np.random.default_rng(1), 0.8, 0
    shift = math.sqrt(2) * st.norm.ppf(true_auc)
    truth = np.r_[np.ones(40, bool), np.zeros(40, bool)]
    for _ in range(400):
        lo, hi = S.auc(truth, np.r_[rng.normal(shift, 1, 40), rng.normal(0, 1, 40)])["ci95"]
        hits += lo <= true_auc <= hi
    assert 0.91 <= hits / 400 <= 0.99


def test_synth_score_orders_sure_real_to_sure_synthetic():
    said = np.array([False, False, True, True])
    assert S.synth_score(said, np.array([5, 1, 1, 5])).tolist() == [-5, -1, 1, 5]


def test_cohen_kappa_hand_formula_and_sklearn():
    a = np.array([1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0])
    b = np.array([1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0])
    po = np.mean(a == b)
    pe = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean())
    [pair] = S.cohen_pairs({"r1": a, "r2": b})
    assert pair["kappa"] == pytest.approx((po - pe) / (1 - pe)) == pytest.approx(cohen_kappa_score(a, b))
    assert pair["n"] == 12 and pair["ci95"][0] < pair["kappa"] < pair["ci95"][1]
    assert len(S.cohen_pairs({"a": a, "b": b, "c": a})) == 3
    idx = S.resamples(12)[:20]  # the bootstrap's vectorized kappa is sklearn's, resample by resample
    ref = [cohen_kappa_score(a[i], b[i]) if len(set(a[i]) | set(b[i])) > 1 else np.nan for i in idx]
    assert np.allclose(S.binary_kappa_batch(a[idx], b[idx]), ref, equal_nan=True)


def test_fleiss_kappa_binary_by_hand():
    rng = np.random.default_rng(3)
    truth = rng.random(30) < 0.5
    m = np.stack([np.where(rng.random(30) < p, truth, ~truth) for p in (0.9, 0.8, 0.7, 0.6)], axis=1).astype(int)
    k = m.shape[1]
    ones = m.sum(1)
    p_i = (ones * (ones - 1) + (k - ones) * (k - ones - 1)) / (k * (k - 1))
    p1 = ones.sum() / m.size
    pe = p1 ** 2 + (1 - p1) ** 2
    got = S.fleiss(m)
    assert got["kappa"] == pytest.approx((p_i.mean() - pe) / (1 - pe))
    assert got["n_cases"] == 30 and got["n_readers"] == 4 and got["ci95"][0] < got["kappa"] < got["ci95"][1]
    idx = S.resamples(30)[:20]  # the bootstrap's vectorized form is statsmodels' fleiss_kappa, resample by resample
    ref = [fleiss_kappa(aggregate_raters(m[i], n_cat=2)[0]) for i in idx]
    assert np.allclose(S.binary_fleiss_batch(m[idx]), ref)


def test_equivalence_needs_many_cases_at_fifty_percent():
    many, few = S.equivalence(200, 400, 0.10), S.equivalence(10, 20, 0.10)
    assert many["equivalent"] and many["p_value"] < 0.05
    assert not few["equivalent"] and few["p_value"] > 0.05
    for k, n in [(200, 400), (10, 20), (118, 200), (45, 100)]:  # TOST at 5 % <-> the 90 % exact CI inside the margin
        low, high = st.beta.ppf(0.05, k, n - k + 1), st.beta.ppf(0.95, k + 1, n - k)
        assert S.equivalence(k, n, 0.10)["equivalent"] == (0.4 < low and high < 0.6)
    with pytest.raises(ValueError, match="margin"):
        S.equivalence(5, 10, 0.7)


def test_verdict_never_calls_a_non_significant_difference_indistinguishable():
    def verdict(k, n):
        return S.verdict(S.proportion(k, n), S.chance_test(k, n), S.equivalence(k, n, 0.10))["code"]

    assert verdict(10, 20) == "not_shown_to_differ"  # 50 % of 20: neither shown
    assert verdict(200, 400) == "indistinguishable"
    assert verdict(90, 100) == "distinguishable"
    assert verdict(10, 100) == "below_chance"
    assert verdict(2150, 4000) == "above_chance_within_margin"  # 53.75 %: significant yet within +-10 points
    assert "not shown to differ" in S.verdict(S.proportion(10, 20), S.chance_test(10, 20),
                                              S.equivalence(10, 20, 0.1))["text"]


def test_plausibility_welch_interval_matches_statsmodels():
    real = np.array([5, 4, 5, 4, 3, 5, 4, 4, 5, 5], float)
    synth = np.array([3, 4, 2, 3, 4, 3, 2, 4, 3, 3, 2], float)
    got = S.plausibility(real, synth)
    ref = CompareMeans(DescrStatsW(synth), DescrStatsW(real)).tconfint_diff(usevar="unequal")
    assert got["difference"] == pytest.approx(synth.mean() - real.mean())
    assert got["ci95"] == pytest.approx(list(ref))
    assert got["mann_whitney_p"] < 0.01 and got["real"]["n"] == 10 and got["synthetic"]["n"] == 11
    assert got["real"]["ci95"] == pytest.approx(list(DescrStatsW(real).tconfint_mean()))


def test_reader_summary_known_answer_readers():
    truth = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    conf, plaus = np.full(100, 4), np.full(100, 3)
    perfect = S.reader_summary(truth, truth.copy(), conf, plaus, 0.10)
    assert perfect["accuracy"]["estimate"] == 1 and perfect["auc"]["estimate"] == 1
    assert perfect["sensitivity"]["k"] == 50 and perfect["specificity"]["k"] == 50
    assert perfect["verdict"]["code"] == "distinguishable"
    always_synth = S.reader_summary(truth, np.ones(100, bool), conf, plaus, 0.10)
    assert always_synth["sensitivity"]["estimate"] == 1 and always_synth["specificity"]["estimate"] == 0
    assert always_synth["accuracy"]["estimate"] == 0.5 and always_synth["auc"]["estimate"] == 0.5


def test_pooling_identical_readers_does_not_buy_equivalence():
    """Five readers who answer every case alike (at 50 %) carry the information of one reader: the naive exact TOST
    over 200 readings would call them equivalent, the two-way bootstrap over cases and readers must not."""
    correct = np.repeat((np.arange(40) % 2 == 0)[:, None], 5, axis=1).astype(float)  # 20 of 40 right, all alike
    assert S.equivalence(int(correct.sum()), correct.size, 0.10)["equivalent"]  # the naive test is fooled
    clustered = S.clustered_accuracy(correct, 0.10)
    assert not clustered["equivalent"] and clustered["verdict"]["code"] == "not_shown_to_differ"
    one = S.proportion(20, 40)["ci95"]  # about one reader's exact interval, not five readers' worth
    assert clustered["ci95"][0] < 0.5 - 0.1 and clustered["ci95"][1] > 0.5 + 0.1
    assert abs((clustered["ci95"][1] - clustered["ci95"][0]) - (one[1] - one[0])) < 0.08


def test_pooling_independent_readers_at_chance_shows_equivalence():
    rng = np.random.default_rng(5)
    correct = (rng.random((200, 6)) < 0.5).astype(float)  # independent coin flips: cases and readers alike
    clustered = S.clustered_accuracy(correct, 0.10)
    assert clustered["equivalent"] and clustered["verdict"]["code"] == "indistinguishable"
    assert clustered["n_cases"] == 200 and clustered["n_readers"] == 6
    assert clustered["ci95"][0] < correct.mean() < clustered["ci95"][1]
    skilled = S.clustered_accuracy((rng.random((60, 4)) < 0.85).astype(float), 0.10)
    assert skilled["verdict"]["code"] == "distinguishable"
