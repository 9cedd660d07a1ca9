"""Every number per patient group, with intervals: the disaggregation behind `synthmed bias` (issue 15).

Groups are values of a covariate (``sex``), age bands cut from configurable edges (``age_band``) or their cells
(``sex x age_band``). Point values come from fairlearn's ``MetricFrame`` (Weerts et al., JMLR 24(257), 2023):
``by_group``, and the gap statistics ``difference`` (largest minus smallest group value) and ``ratio`` (smallest
over largest). Intervals are percentile 95 % intervals of a bootstrap stratified by group and by label inside a
group (every replicate keeps every group's size and its count of each class, so no replicate loses a group or a
class; Efron & Tibshirani, An Introduction to the Bootstrap, 1993, ch. 13). A gap's interval follows the pair of
groups that the full data names as lowest and highest (re-picking them per replicate would make the difference a
maximum over noise that is never 0, so a fair classifier could not show "no gap"). Replicates use a vectorized per-group
computation that the tests check against ``MetricFrame`` (MetricFrame costs ~10 ms a call; 1000 replicates x
several groupings x several conditions would take minutes).

A metric that is undefined for a group (no positives: sensitivity, FNR, AUROC; no negatives: FPR, AUROC) is NaN
with its reason, never 0. Groups with fewer than ``min_n`` cases or ``min_pos`` positives (or no negatives) are
reported with their counts and left out of the gap statistics; the result says which and why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from scipy.stats import chi2_contingency, rankdata
from sklearn.metrics import roc_auc_score

INTERSECT_SEP = " x "  # "sex x age_band": the name of an intersection and the separator of its cells' labels
LEVEL = 0.95  # percentile interval coverage


# ------------------------------------------------------------------------------------------------------ groups
def age_bands(age: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Band labels ``"20-40"`` of ages ``[n]``: band i is ``[edges[i], edges[i + 1])``, the last one closed.

    Raises:
        ValueError: edges not increasing, or an age outside ``[edges[0], edges[-1]]`` (naming ``age_bands``).
    """
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"age_bands: expected at least two increasing edges in years, got {edges}")
    age = np.asarray(age, dtype=np.float64)
    outside = (age < edges[0]) | (age > edges[-1]) | ~np.isfinite(age)
    if outside.any():
        raise ValueError(f"age_bands {edges}: {int(outside.sum())} ages outside [{edges[0]:g}, {edges[-1]:g}] "
                         f"(e.g. {age[outside][0]:g}); widen the end edges")
    index = np.clip(np.searchsorted(edges, age, side="right") - 1, 0, len(edges) - 2)
    labels = np.array([f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])])
    return labels[index]


def group_columns(attrs: Mapping[str, np.ndarray], by: Sequence[str], edges: Sequence[float],
                  intersect: bool = False) -> dict[str, np.ndarray]:
    """Group labels ``[n]`` (strings) per grouping: each name of ``by`` and, with ``intersect``, their cells.

    Args:
        attrs: covariate -> values ``[n]`` (e.g. ``sex``, ``age``).
        by: groupings: a covariate name (its values are the groups) or ``age_band`` (``age`` cut at ``edges``).
        edges: age-band edges in years.
        intersect: also the cells of all groupings together, named ``"sex x age_band"``.
    """
    out = {}
    for name in by:
        source = "age" if name == "age_band" else name
        if source not in attrs:
            raise ValueError(f"by: no covariate {source!r} to group by (have {sorted(attrs)})")
        values = np.asarray(attrs[source])
        out[name] = age_bands(values, edges) if name == "age_band" else np.array([f"{v:g}" for v in values])
    if intersect and len(by) > 1:
        out[INTERSECT_SEP.join(by)] = np.array([INTERSECT_SEP.join(cell) for cell in zip(*(out[b] for b in by))])
    return out


def with_label(groups: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Group x label cell labels ``"<group> x <label>"`` ``[n]`` of group labels and class labels, each ``[n]``."""
    groups, label = np.asarray(groups), np.asarray(label)
    if groups.shape != label.shape:
        raise ValueError(f"label: expected one class per image ({groups.shape}), got {label.shape}")
    return np.array([f"{g}{INTERSECT_SEP}{float(c):g}" for g, c in zip(groups, label)], dtype=str)


# ---------------------------------------------------------------------------------------------- classifier metrics
@dataclass(frozen=True)
class Metric:
    """A per-group metric of labels and scores: its function for MetricFrame, what it needs, its direction."""

    fn: Callable[..., float]
    needs: tuple[str, ...]  # "pos" and/or "neg": classes without which it is undefined
    higher_is_better: bool


def _auroc(y_true, score) -> float:
    y = np.asarray(y_true)
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def _rate(y_true, score, threshold: float, cls: int, flagged: bool) -> float:
    """Share of class ``cls`` cases whose score is (``flagged``) or is not at/above ``threshold``."""
    y, s = np.asarray(y_true), np.asarray(score)
    members = y == cls
    return float(((s[members] >= threshold) == flagged).mean()) if members.any() else float("nan")


CLASSIFIER_METRICS = {
    "auroc": Metric(_auroc, ("pos", "neg"), True),
    "sensitivity": Metric(lambda y, s, t: _rate(y, s, t, 1, True), ("pos",), True),
    "fnr": Metric(lambda y, s, t: _rate(y, s, t, 1, False), ("pos",), False),  # underdiagnosis
    "fpr": Metric(lambda y, s, t: _rate(y, s, t, 0, True), ("neg",), False),
}


def metric_frame(y_true: np.ndarray, score: np.ndarray, groups: np.ndarray, metrics: Sequence[str],
                 threshold: float) -> MetricFrame:
    """fairlearn's MetricFrame of ``metrics`` (names of ``CLASSIFIER_METRICS``) over the groups."""
    fns = {}
    for name in metrics:
        m = CLASSIFIER_METRICS[name]
        fns[name] = m.fn if name == "auroc" else (lambda y, s, _f=m.fn: _f(y, s, threshold))
    return MetricFrame(metrics=fns, y_true=np.asarray(y_true), y_pred=np.asarray(score),
                       sensitive_features=pd.Series(np.asarray(groups), name="group"))


def _by_group_fast(y: np.ndarray, score: np.ndarray, codes: np.ndarray, n_groups: int, metrics: Sequence[str],
                   threshold: float) -> dict[str, np.ndarray]:
    """The same values as ``metric_frame(...).by_group``, vectorized: metric -> ``[G]`` (NaN where undefined)."""
    pos = np.bincount(codes, weights=y, minlength=n_groups)
    neg = np.bincount(codes, minlength=n_groups) - pos
    flag = score >= threshold
    tp = np.bincount(codes, weights=flag & (y == 1), minlength=n_groups)
    fp = np.bincount(codes, weights=flag & (y == 0), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"sensitivity": tp / pos, "fnr": 1.0 - tp / pos, "fpr": fp / neg}
    if "auroc" in metrics:  # Mann-Whitney U / (n_pos n_neg), with mid-ranks for ties (= roc_auc_score)
        auc = np.full(n_groups, np.nan)
        for g in np.flatnonzero((pos > 0) & (neg > 0)):
            members = codes == g
            ranks = rankdata(score[members])
            auc[g] = (ranks[y[members] == 1].sum() - pos[g] * (pos[g] + 1) / 2) / (pos[g] * neg[g])
        out["auroc"] = auc
    return {m: out[m] for m in metrics}


# -------------------------------------------------------------------------------------------------------- bootstrap
def stratified_bootstrap(strata: np.ndarray, n_boot: int, seed: int = 0):
    """Yields ``n_boot`` index arrays ``[n]``, each resampling every stratum with replacement to its own size.

    Args:
        strata: stratum label per case ``[n]`` (e.g. group x label), any hashable values.
    """
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    for _ in range(n_boot):
        yield np.concatenate([m[rng.integers(0, len(m), len(m))] for m in members])


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of finite replicates ``[B]``; (NaN, NaN) when fewer than half are finite."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) < max(2, np.asarray(replicates).size // 2):
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(r, [tail, 100 - tail])
    return float(low), float(high)


# ------------------------------------------------------------------------------------------------- disaggregation
def _undefined(metric: str, n_pos: int, n_neg: int) -> str | None:
    needs = CLASSIFIER_METRICS[metric].needs
    missing = [w for w, n in (("pos", n_pos), ("neg", n_neg)) if w in needs and n == 0]
    return {"pos": "no positive cases", "neg": "no negative cases"}[missing[0]] if missing else None


def _exclusion(n: int, n_pos: int, n_neg: int, min_n: int, min_pos: int) -> str | None:
    """Why a group is left out of the gap statistics, or None."""
    if n < min_n:
        return f"n={n} < min_n={min_n}"
    if n_pos < min_pos:
        return f"{n_pos} positives < min_pos={min_pos}"
    return "no negative cases" if n_neg == 0 else None


def gap_stats(values: Mapping[str, float], higher_is_better: bool) -> dict:
    """``difference`` (max - min), ``ratio`` (min / max), ``group_min``/``group_max`` (fairlearn's definitions) and
    the worst and best group of per-group ``values`` (the included groups only; NaN values ignored)."""
    finite = {g: v for g, v in values.items() if np.isfinite(v)}
    if len(finite) < 2:
        return {"difference": float("nan"), "ratio": float("nan"), "group_min": float("nan"),
                "group_max": float("nan"), "worst_group": None, "best_group": None}
    lo, hi = min(finite, key=finite.get), max(finite, key=finite.get)
    ratio = finite[lo] / finite[hi] if finite[hi] != 0 else float("nan")
    worst, best = (lo, hi) if higher_is_better else (hi, lo)
    if finite[hi] == finite[lo]:  # a tie names no group
        worst = best = None
    return {"difference": finite[hi] - finite[lo], "ratio": ratio, "group_min": finite[lo],
            "group_max": finite[hi], "worst_group": worst, "best_group": best}


def extreme_pair(values: np.ndarray, keep: np.ndarray) -> tuple[int, int] | None:
    """Indices (lowest, highest) of the kept finite per-group values ``[G]``, or None with fewer than two."""
    ok = np.flatnonzero(keep & np.isfinite(values))
    if len(ok) < 2:
        return None
    lo, hi = int(ok[np.argmin(values[ok])]), int(ok[np.argmax(values[ok])])
    if lo == hi:  # all equal: still two different groups, so that replicates can differ
        hi = int(ok[1] if ok[0] == lo else ok[0])
    return lo, hi


def _pair_gap(values: np.ndarray, pair: tuple[int, int] | None) -> dict[str, float]:
    """difference (high - low) and ratio (low / high) of a fixed pair of groups; NaN without a pair.

    Replicates keep the pair the full data named: re-picking the extremes in every replicate would make the
    difference a maximum over noise, >= 0 by construction, whose interval could never hold 0 (no gap)."""
    if pair is None:
        return {"difference": np.nan, "ratio": np.nan}
    lo, hi = values[pair[0]], values[pair[1]]
    return {"difference": hi - lo, "ratio": lo / hi if hi != 0 else np.nan}


@dataclass
class _Design:
    """One grouping of the cases: integer codes, group names, counts and the strata of the bootstrap."""

    names: list[str]
    codes: np.ndarray
    n: np.ndarray
    n_pos: np.ndarray
    keep: np.ndarray
    why: list[str | None]


def _design(y: np.ndarray, groups: np.ndarray, min_n: int, min_pos: int) -> _Design:
    names, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n = np.bincount(codes, minlength=len(names))
    n_pos = np.bincount(codes, weights=y, minlength=len(names)).astype(int)
    why = [_exclusion(int(a), int(b), int(a - b), min_n, min_pos) for a, b in zip(n, n_pos)]
    return _Design(list(names), codes, n, n_pos, np.array([w is None for w in why]), why)


def disaggregate(y_true: np.ndarray, scores: Mapping[str, np.ndarray], groups: np.ndarray,
                 metrics: Sequence[str] = tuple(CLASSIFIER_METRICS), *, threshold: float = 0.5, min_n: int = 20,
                 min_pos: int = 5, n_boot: int = 1000, seed: int = 0,
                 pairs: Sequence[tuple[str, str]] = (), strata: np.ndarray | None = None) -> dict:
    """Classifier metrics per group for one or more conditions scored on the same cases, with intervals.

    Args:
        y_true: labels ``[n]`` in {0, 1}.
        scores: condition (e.g. a training regime) -> scores ``[n]`` or ``[n, S]`` (S seeds: per-group values are
            the mean over seeds of each seed's value).
        groups: group label per case ``[n]``.
        metrics: names of ``CLASSIFIER_METRICS``.
        threshold: a case is flagged positive when its score is >= threshold.
        min_n, min_pos: smaller groups (or with fewer positives, or no negatives) are reported, not compared.
        n_boot: bootstrap replicates (0: no intervals).
        seed: bootstrap seed.
        pairs: (baseline, candidate) conditions whose gap change (candidate minus baseline) is estimated, paired
            on the same resampled cases.
        strata: bootstrap strata ``[n]`` (default: group x label); pass a finer partition (e.g. the intersection
            cells x label) so that replicates of several groupings share the same draws.

    Returns:
        A JSON-able dict: ``groups`` (per group: n, n_pos, included, excluded_because; per condition and metric:
        value, low, high, undefined), ``gaps`` (per condition and metric: difference, ratio with intervals,
        group_min, group_max, worst/best group), ``changes`` (per pair and metric: change of difference and of
        ratio with intervals), ``excluded`` and the settings.
    """
    y = np.asarray(y_true).astype(int)
    if not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"y_true: expected labels 0/1, got values {np.unique(y)[:5]}")
    mats = {c: _as_matrix(s, len(y), c) for c, s in scores.items()}
    for base, cand in pairs:
        for c in (base, cand):
            if c not in mats:
                raise ValueError(f"pairs: no condition {c!r} among the scores ({sorted(mats)})")
    d = _design(y, groups, min_n, min_pos)
    point = {c: _point_values(y, m, groups, d, metrics, threshold) for c, m in mats.items()}
    extremes = {c: {m: extreme_pair(point[c][m], d.keep) for m in metrics} for c in mats}
    boot = _bootstrap(y, mats, d, metrics, threshold, n_boot, seed, extremes,
                      strata if strata is not None else np.char.add(np.asarray(groups).astype(str), y.astype(str)))
    return _assemble(d, point, boot, metrics, pairs, y, min_n, min_pos, n_boot, threshold)


def _as_matrix(score, n: int, name: str) -> np.ndarray:
    s = np.asarray(score, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    if s.ndim != 2 or s.shape[0] != n:
        raise ValueError(f"scores[{name!r}]: expected [n] or [n, seeds] with n={n}, got {s.shape}")
    return s


def _point_values(y, mat, groups, d: _Design, metrics, threshold) -> dict[str, np.ndarray]:
    """Per-group values ``[G]`` per metric from MetricFrame.by_group, averaged over the seed columns."""
    per_seed = []
    for j in range(mat.shape[1]):
        frame = metric_frame(y, mat[:, j], np.asarray(groups).astype(str), metrics, threshold).by_group
        per_seed.append({m: frame[m].reindex(d.names).to_numpy(np.float64) for m in metrics})
    return {m: np.mean([p[m] for p in per_seed], axis=0) for m in metrics}


def _table(y, mat, codes, n_groups, metrics, threshold) -> dict[str, np.ndarray]:
    per_seed = [_by_group_fast(y, mat[:, j], codes, n_groups, metrics, threshold) for j in range(mat.shape[1])]
    return {m: np.mean([p[m] for p in per_seed], axis=0) for m in metrics}


def _bootstrap(y, mats, d: _Design, metrics, threshold, n_boot, seed, extremes, strata) -> dict:
    """Replicates: condition -> metric -> ``[B, G]`` per-group values and ``[B]`` gap statistics."""
    out = {c: {"by_group": {m: [] for m in metrics}, "gaps": {m: {"difference": [], "ratio": []} for m in metrics}}
           for c in mats}
    for idx in stratified_bootstrap(np.asarray(strata), n_boot, seed):
        for c, mat in mats.items():
            table = _table(y[idx], mat[idx], d.codes[idx], len(d.names), metrics, threshold)
            for m, v in table.items():
                out[c]["by_group"][m].append(v)
            for m in metrics:
                g = _pair_gap(table[m], extremes[c][m])
                for k in ("difference", "ratio"):
                    out[c]["gaps"][m][k].append(g[k])
    return out


def _assemble(d: _Design, point, boot, metrics, pairs, y, min_n, min_pos, n_boot, threshold) -> dict:
    groups = []
    for i, name in enumerate(d.names):
        n_pos, n_neg = int(d.n_pos[i]), int(d.n[i] - d.n_pos[i])
        values = {}
        for c in point:
            values[c] = {}
            for m in metrics:
                reps = np.array(boot[c]["by_group"][m])[:, i] if n_boot else np.array([])
                low, high = interval(reps) if n_boot else (float("nan"), float("nan"))
                values[c][m] = {"value": float(point[c][m][i]), "low": low, "high": high,
                                "undefined": _undefined(m, n_pos, n_neg)}
        groups.append({"group": name, "n": int(d.n[i]), "n_pos": n_pos, "included": bool(d.keep[i]),
                       "excluded_because": d.why[i], "values": values})
    gaps = {c: {m: _gap_entry(point[c][m], d, boot[c]["gaps"][m], m, n_boot) for m in metrics} for c in point}
    changes = {f"{b} -> {a}": {m: _change(boot, b, a, m, gaps, n_boot) for m in metrics} for b, a in pairs}
    excluded = [{"group": g["group"], "n": g["n"], "n_pos": g["n_pos"], "why": g["excluded_because"]}
                for g in groups if not g["included"]]
    return {"n": int(len(y)), "n_pos": int(y.sum()), "groups": groups, "gaps": gaps, "changes": changes,
            "excluded": excluded, "settings": {"min_n": min_n, "min_pos": min_pos, "n_boot": n_boot,
                                               "threshold": threshold, "level": LEVEL}}


def _gap_entry(values: np.ndarray, d: _Design, reps: dict, metric: str, n_boot: int) -> dict:
    kept = {g: float(v) for g, v, k in zip(d.names, values, d.keep) if k}
    stats = gap_stats(kept, CLASSIFIER_METRICS[metric].higher_is_better)
    for k in ("difference", "ratio"):
        low, high = interval(reps[k]) if n_boot else (float("nan"), float("nan"))
        stats[k] = {"value": stats[k], "low": low, "high": high}
    stats["groups_compared"] = sorted(kept)
    return stats


def _change(boot, base: str, cand: str, metric: str, gaps, n_boot: int) -> dict:
    """Candidate minus baseline gap, paired: each replicate scores both conditions on the same cases."""
    out = {}
    for k in ("difference", "ratio"):
        value = gaps[cand][metric][k]["value"] - gaps[base][metric][k]["value"]
        reps = np.array(boot[cand]["gaps"][metric][k]) - np.array(boot[base]["gaps"][metric][k])
        low, high = interval(reps) if n_boot else (float("nan"), float("nan"))
        out[k] = {"value": float(value), "low": low, "high": high}
    return out


# ---------------------------------------------------------------------------------------------- representation
def representation(fake: np.ndarray, real: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                   order: Sequence[str] | None = None) -> dict:
    """How a set of generated images represents each group, against a real reference.

    Args:
        fake: group label read from each generated image ``[n_fake]``.
        real: group label of each real reference image ``[n_real]`` (read by the same reader, so that the reader's
            own error affects both sides alike).
        n_boot: bootstrap replicates (each resamples both sets, each at its own size).
        order: groups to report (default: those seen in either set, sorted).

    Returns:
        Per group: shares of both sets and the gap (fake - real share) with its interval; the total variation
        distance (with interval) and the chi-squared test of homogeneity of the two count vectors.
    """
    fake, real = np.asarray(fake).astype(str), np.asarray(real).astype(str)
    if len(fake) == 0 or len(real) == 0:
        raise ValueError(f"representation: need images on both sides, got {len(fake)} generated, {len(real)} real")
    names = [str(g) for g in order] if order is not None else sorted({str(g) for g in (*fake, *real)})
    pf, pr = _shares(fake, names), _shares(real, names)
    rng = np.random.default_rng(seed)
    reps = [(_shares(fake[rng.integers(0, len(fake), len(fake))], names),
             _shares(real[rng.integers(0, len(real), len(real))], names)) for _ in range(n_boot)]
    gap_reps = np.array([a - b for a, b in reps]).reshape(n_boot, len(names))
    tvd_reps = 0.5 * np.abs(gap_reps).sum(1)
    counts = np.array([[int((fake == g).sum()) for g in names], [int((real == g).sum()) for g in names]])
    seen = counts.sum(0) > 0
    chi2, p, dof, _ = chi2_contingency(counts[:, seen]) if seen.sum() >= 2 else (float("nan"),) * 2 + (0, None)
    groups = [{"group": g, "n_fake": int(counts[0, i]), "n_real": int(counts[1, i]), "share_fake": float(pf[i]),
               "share_real": float(pr[i]), "gap": _with_interval(pf[i] - pr[i], gap_reps[:, i], n_boot)}
              for i, g in enumerate(names)]
    return {"n_fake": len(fake), "n_real": len(real), "groups": groups,
            "tvd": _with_interval(0.5 * np.abs(pf - pr).sum(), tvd_reps, n_boot),
            "chi2": {"statistic": float(chi2), "dof": int(dof), "p_value": float(p)}}


def shares(labels: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Share of each group name among ``labels`` (0 for an absent group)."""
    return dict(zip(names, _shares(np.asarray(labels).astype(str), names).tolist()))


def _shares(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return np.array([(labels == g).mean() for g in names], dtype=np.float64)


def _with_interval(value: float, reps: np.ndarray, n_boot: int) -> dict:
    low, high = interval(reps) if n_boot else (float("nan"), float("nan"))
    return {"value": float(value), "low": low, "high": high}
