"""The three layers of the bias report (issue 15), on images and readings; `synthmed bias` wires them to a run.

1. Representation: the groups of generated images as the in-domain readers see them (domain.py's sex and age
   heads), against the real training distribution (total variation distance, chi-squared test) and against real
   held-out images read by the same reader (the reader's own error then affects both sides alike); the reader's
   error on real held-out images is the floor no generator can go below. Conditional generators: conditioning
   accuracy and the rare-class rate per requested group.
2. Fidelity per group: KID (unbiased at small n, so groups of different sizes compare; per-group FIDs would not),
   precision/recall and coverage on the in-domain features, memorization rate per group.
3. Downstream per group: classifier metrics of the utility harness' predictions (``utility/predictions.csv``),
   the worst group, the largest gap and its change from the real baseline to real + synthetic, paired on cases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint
from torch import Tensor

from synthmed.metrics import fairness as fair
from synthmed.metrics.domain import DomainModel
from synthmed.metrics.features import density_coverage, kid, precision_recall
from synthmed.metrics.fid import fid_from_features
from synthmed.metrics.memorization import memorization

PREDICTION_COLUMNS = ("regime", "seed", "real_fraction", "case", "y_true", "score", "sex", "age")


def readings(reader: DomainModel, images: Tensor, batch_size: int = 50) -> tuple[dict[str, np.ndarray], Tensor]:
    """The covariates a reader reads from images ``[N, C, *spatial]`` (sex class, age in years; each ``[N]``) and
    its standardized features ``[N, F]``."""
    out = reader.outputs(images, batch_size)
    attrs = {k: out[k].numpy() for k in ("sex", "age") if k in reader.heads}
    return attrs, out["features"]


def clip_ages(attrs: Mapping[str, np.ndarray], edges: Sequence[float]) -> dict[str, np.ndarray]:
    """Read ages clipped into the band edges: a regressor may read 17 or 93 years; true ages are never clipped."""
    out = dict(attrs)
    if "age" in out:
        out["age"] = np.clip(np.asarray(out["age"], dtype=np.float64), float(edges[0]), float(edges[-1]))
    return out


# ---------------------------------------------------------------------------------------------- 1 representation
def representation_layer(fake_read: Mapping[str, np.ndarray], heldout_read: Mapping[str, np.ndarray],
                         heldout_true: Mapping[str, np.ndarray], train_true: Mapping[str, np.ndarray],
                         by: Sequence[str], edges: Sequence[float], intersect: bool, n_boot: int,
                         seed: int) -> dict:
    """Per grouping: shares and gaps with intervals, TVD and chi-squared, and the reader's accuracy per group.

    Args:
        fake_read: covariates read from generated images, each ``[n_fake]``.
        heldout_read, heldout_true: read and true covariates of real held-out images, each ``[n_heldout]``.
        train_true: true covariates of the training images, each ``[n_train]``.
        by, edges, intersect: see ``fairness.group_columns``.
    """
    g_fake = fair.group_columns(clip_ages(fake_read, edges), by, edges, intersect)
    g_read = fair.group_columns(clip_ages(heldout_read, edges), by, edges, intersect)
    g_held = fair.group_columns(heldout_true, by, edges, intersect)
    g_train = fair.group_columns(train_true, by, edges, intersect)
    out = {}
    for name in g_fake:
        # Every group any side shows, the read held-out included: a group only the reader puts real images in was
        # left out, so the real shares did not sum to 1 and the TVD and chi-squared missed it.
        order = sorted(set(g_train[name]) | set(g_held[name]) | set(g_fake[name]) | set(g_read[name]))
        kw = {"n_boot": n_boot, "seed": seed, "order": order}
        out[name] = {
            "vs_heldout_read": fair.representation(g_fake[name], g_read[name], **kw),  # the reader cancels
            "vs_train": fair.representation(g_fake[name], g_train[name], **kw),
            "reader_floor": fair.representation(g_read[name], g_train[name], **kw),  # a perfect generator's
            "reader_accuracy": _reader_accuracy(g_read[name], g_held[name], order),
        }
    return out


def _reader_accuracy(read: np.ndarray, true: np.ndarray, order: Sequence[str]) -> dict:
    """Share of real held-out images of each true group that the reader puts in that group (Wilson 95 %)."""
    out = {}
    for g in order:
        members = true == g
        n, hits = int(members.sum()), int((read[members] == g).sum())
        out[g] = _proportion(hits, n)
    return out


def _proportion(hits: int, n: int) -> dict:
    if n == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0,
                "undefined": "no images in this group"}
    low, high = proportion_confint(hits, n, alpha=1 - fair.LEVEL, method="wilson")
    clean = lambda x: float(min(max(round(x, 12), 0.0), 1.0))  # Wilson's 0 bound comes out as 7e-18
    return {"value": hits / n, "low": clean(low), "high": clean(high), "n": n, "undefined": None}


def conditioning_layer(requested: Mapping[str, np.ndarray], read: Mapping[str, np.ndarray], by: Sequence[str],
                       edges: Sequence[float], intersect: bool) -> dict:
    """Conditional generators, per requested group: accuracy of each categorical condition as read back (sex,
    label), mean absolute age error, and the rare-class rate (share read as label 1 among label-1 requests).

    Args:
        requested: what each sample was asked for, covariate -> ``[n]``.
        read: what the readers read from the samples, covariate -> ``[n]``; a grouping covariate that was not
            requested (a label-only model) groups by its reading.
    """
    groups = fair.group_columns(clip_ages({**read, **requested}, edges), by, edges, intersect)
    out = {}
    for name, labels in groups.items():
        out[name] = {}
        for g in sorted(set(labels)):
            m = labels == g
            entry = {k: _proportion(int((read[k][m] == requested[k][m]).sum()), int(m.sum()))
                     for k in ("sex", "label") if k in requested and k in read}
            if "age" in requested and "age" in read:
                entry["age_mae"] = {"value": float(np.abs(read["age"][m] - requested["age"][m]).mean()),
                                    "n": int(m.sum())}
            if "label" in requested and "label" in read:
                rare = m & (requested["label"] == 1)
                entry["rare_class_rate"] = _proportion(int((read["label"][rare] == 1).sum()), int(rare.sum()))
            out[name][g] = entry
    return out


def rare_class_layer(fake_label: np.ndarray, fake_groups: Mapping[str, np.ndarray], real_label: np.ndarray,
                     real_groups: Mapping[str, np.ndarray]) -> dict:
    """Unconditional samples: the share read as the rare class (label 1) per group, against real held-out images
    read and grouped by the same readers (their errors then cancel to first order), and the difference with a
    Newcombe hybrid-score 95 % interval (Newcombe, Stat. Med. 17(8), 1998).

    Args:
        fake_label, real_label: label read from each image, ``[n_fake]``, ``[n_real]``.
        fake_groups, real_groups: grouping -> group read from each image.
    """
    out = {}
    for name in fake_groups:
        fg, rg = np.asarray(fake_groups[name]), np.asarray(real_groups[name])
        out[name] = {}
        for g in sorted(set(fg) | set(rg)):
            f, r = np.asarray(fake_label)[fg == g], np.asarray(real_label)[rg == g]
            entry = {"fake": _proportion(int(f.sum()), len(f)), "real": _proportion(int(r.sum()), len(r))}
            if len(f) and len(r):
                low, high = confint_proportions_2indep(int(f.sum()), len(f), int(r.sum()), len(r), method="newcomb",
                                                       compare="diff", alpha=1 - fair.LEVEL)
                entry["difference"] = {"value": float(f.mean() - r.mean()), "low": float(low), "high": float(high)}
            out[name][g] = entry
    return out


# ---------------------------------------------------------------------------------------------------- 2 fidelity
def fidelity_layer(fake_feats: Tensor, fake_groups: Mapping[str, np.ndarray], real_feats: Tensor,
                   real_groups: Mapping[str, np.ndarray], memorized: np.ndarray | None, *,
                   fake_label: np.ndarray | None = None, real_label: np.ndarray | None = None, min_n: int = 20,
                   kid_subsets: int = 50, pr_k: int = 3, dc_k: int = 5, seed: int = 0) -> dict:
    """Per grouping and group: KID (mean, std over subsets), precision, recall, coverage, memorization rate, and
    the in-domain Frechet distance where both sides have more images than feature dimensions; with labels on both
    sides, the same per group x label cell (``by_label``).

    Args:
        fake_feats, real_feats: in-domain features ``[n_fake, F]``, ``[n_real, F]``.
        fake_groups: group of each generated image as read, grouping -> ``[n_fake]``.
        real_groups: true group of each real held-out image, grouping -> ``[n_real]``.
        memorized: per generated image, whether it lies nearer a training image than held-out images do
            (``memorization``), ``[n_fake]`` bool, or None.
        fake_label: class of each generated image ``[n_fake]`` (requested, or read by the lesion reader), or None.
        real_label: true class of each real held-out image ``[n_real]``, or None.
        min_n: a group (or cell) needs min_n images on both sides to be scored (KID of 3 images is noise);
            smaller ones are listed with their counts and left out of the gap.

    Returns:
        Per grouping: ``groups`` (group -> row), ``kid_gap`` over the scored groups (``gap_stats`` plus
        ``groups_compared``), ``excluded`` (group, counts, why); with labels, ``by_label``: ``groups`` (cell
        ``"<group> x <label>"`` -> row with ``group`` and ``label``), ``kid_gap`` per label (the groups compared
        among images of one class: a lesion cell is not compared with a healthy one) and ``excluded``.
    """
    kw = {"min_n": min_n, "kid_subsets": kid_subsets, "pr_k": pr_k, "dc_k": dc_k, "seed": seed}
    labelled = fake_label is not None and real_label is not None
    out = {}
    for name in fake_groups:
        fg, rg = np.asarray(fake_groups[name]), np.asarray(real_groups[name])
        rows = _fidelity_rows(fake_feats, fg, real_feats, rg, memorized, **kw)
        out[name] = {"groups": rows, "kid_gap": _kid_gap(rows), "excluded": _excluded(rows)}
        if labelled:
            out[name]["by_label"] = _label_cells(fake_feats, fg, np.asarray(fake_label), real_feats, rg,
                                                 np.asarray(real_label), memorized, kw)
    return out


def _label_cells(fake_feats, fg, fake_label, real_feats, rg, real_label, memorized, kw) -> dict:
    """The group x label cells of one grouping, scored as groups are; the KID gap within each label."""
    fc, rc = fair.with_label(fg, fake_label), fair.with_label(rg, real_label)
    rows = _fidelity_rows(fake_feats, fc, real_feats, rc, memorized, **kw)
    for cell, row in rows.items():
        row["group"], row["label"] = cell.rsplit(fair.INTERSECT_SEP, 1)
    labels = sorted({row["label"] for row in rows.values()})
    gaps = {lab: _kid_gap({c: r for c, r in rows.items() if r["label"] == lab}) for lab in labels}
    return {"groups": rows, "kid_gap": gaps, "excluded": _excluded(rows)}


def _fidelity_rows(fake_feats: Tensor, fg: np.ndarray, real_feats: Tensor, rg: np.ndarray, memorized, *,
                   min_n, kid_subsets, pr_k, dc_k, seed) -> dict[str, dict]:
    """Group -> fidelity row, for the groups seen on either side (``fg`` ``[n_fake]``, ``rg`` ``[n_real]``)."""
    rows = {}
    for g in sorted(set(fg) | set(rg)):
        f, r = torch.as_tensor(fg == g), torch.as_tensor(rg == g)
        rows[str(g)] = _group_fidelity(fake_feats[f], real_feats[r], memorized[fg == g] if memorized is not None
                                       else None, min_n, kid_subsets, pr_k, dc_k, seed)
    return rows


def _kid_gap(rows: Mapping[str, dict]) -> dict:
    """KID gap statistics over the scored groups (lower KID is better), naming the groups compared."""
    scored = {g: v["kid"]["value"] for g, v in rows.items() if v["scored"]}
    return fair.gap_stats(scored, higher_is_better=False) | {"groups_compared": sorted(scored)}


def _excluded(rows: Mapping[str, dict]) -> list[dict]:
    return [{"group": g, "n_fake": v["n_fake"], "n_real": v["n_real"], "why": v["skipped"]}
            for g, v in rows.items() if not v["scored"]]


def _group_fidelity(fake: Tensor, real: Tensor, memorized, min_n, kid_subsets, pr_k, dc_k, seed) -> dict:
    n_fake, n_real = fake.shape[0], real.shape[0]
    row = {"n_fake": n_fake, "n_real": n_real, "scored": bool(min(n_fake, n_real) >= max(min_n, dc_k + 1))}
    if memorized is not None:
        row["memorization_rate"] = _proportion(int(memorized.sum()), len(memorized))
    if not row["scored"]:
        row["skipped"] = f"n_fake={n_fake}, n_real={n_real}: below min_n={min_n} on a side"
        return row
    mean, std = kid(real, fake, subsets=kid_subsets, subset_size=min(n_fake, n_real), seed=seed)
    precision, recall = precision_recall(real, fake, pr_k)
    row.update(kid={"value": mean, "std": std}, precision=precision, recall=recall,
               coverage=density_coverage(real, fake, dc_k)[1])
    # The Frechet distance needs full-rank covariances (more images than dims) and is biased by n: given where n
    # allows, never as the comparison across groups (KID is).
    if min(n_fake, n_real) > fake.shape[1]:
        row["fd_domain"] = fid_from_features(fake, real)
    return row


def memorized_flags(fake: Tensor, train: Tensor, heldout: Tensor, quantile: float) -> np.ndarray:
    """Per generated image: nearer (pixels, RMS) to a training image than ``quantile`` of held-out images are."""
    result = memorization(fake, train, heldout, quantile)
    return (result.samples.distance < result.threshold).numpy()


# -------------------------------------------------------------------------------------------------- 3 downstream
def read_predictions(path, by: Sequence[str] = (), edges: Sequence[float] = (20, 90)) -> pd.DataFrame:
    """The utility harness' per-case predictions, checked before any expensive work: a ValueError names the file
    and what is wrong (missing columns, labels other than 0/1, non-finite scores, ages outside the bands)."""
    df = pd.read_csv(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(PREDICTION_COLUMNS)}")
    if not df["y_true"].isin([0, 1]).all():
        raise ValueError(f"{path}: y_true must be 0 or 1, got {sorted(df['y_true'].unique())[:5]}")
    score = pd.to_numeric(df["score"], errors="coerce")
    if not np.isfinite(score).all():
        raise ValueError(f"{path}: score must be a finite number in every row ({int((~np.isfinite(score)).sum())} "
                         f"rows are not)")
    try:
        fair.group_columns({"sex": df["sex"].to_numpy(), "age": df["age"].to_numpy()}, by, edges)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return df


def downstream_layer(df: pd.DataFrame, by: Sequence[str], edges: Sequence[float], intersect: bool, *,
                     baseline: str = "real", candidate: str = "real+synth", threshold: float = 0.5,
                     min_n: int = 20, min_pos: int = 5, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per group: AUROC, sensitivity, FNR, FPR of every training condition; gaps; the gap change baseline ->
    candidate, paired on the same test cases.

    Args:
        df: one row per (regime, seed, real_fraction, case): columns ``PREDICTION_COLUMNS``.
        baseline: regime of the real-only baseline; its best condition (highest pooled AUROC over real fractions)
            is compared.
        candidate: regime with synthetic data; its condition at the baseline's real fraction if present, else its
            best.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"predictions: missing columns {missing}; expected {list(PREDICTION_COLUMNS)}")
    df = df.assign(condition=df["regime"].astype(str) + "@" + df["real_fraction"].map(lambda f: f"{float(f):g}"))
    cases = df.drop_duplicates("case").set_index("case").sort_index()
    y = cases["y_true"].to_numpy(int)
    scores = {c: _score_matrix(part, cases.index) for c, part in df.groupby("condition")}
    base, cand = _pick_pair(df, scores, y, baseline, candidate)
    groups = fair.group_columns({"sex": cases["sex"].to_numpy(), "age": cases["age"].to_numpy()}, by, edges,
                                intersect)
    # One partition for all groupings (the finest cells x label): the groupings' intervals share their draws.
    strata = np.array(["|".join(cell) for cell in zip(*(groups[b] for b in by), y.astype(str))])
    pairs = [(base, cand)] if base and cand else []
    per = {name: fair.disaggregate(y, scores, labels, threshold=threshold, min_n=min_n, min_pos=min_pos,
                                   n_boot=n_boot, seed=seed, pairs=pairs, strata=strata)
           for name, labels in groups.items()}
    return {"conditions": sorted(scores), "baseline": base, "candidate": cand, "n_cases": len(y),
            "n_seeds": {c: int(m.shape[1]) for c, m in scores.items()}, "by_grouping": per}


def _score_matrix(part: pd.DataFrame, cases: pd.Index) -> np.ndarray:
    """Scores ``[n_cases, n_seeds]`` of one condition; a ValueError when a seed lacks some test case."""
    wide = part.pivot_table(index="case", columns="seed", values="score", aggfunc="first").reindex(cases)
    if wide.isna().any().any():
        raise ValueError(f"predictions of condition {part['condition'].iloc[0]!r}: some seeds lack some test cases; "
                         f"the comparison must be paired on the same cases")
    return wide.to_numpy(np.float64)


def _pick_pair(df, scores, y, baseline: str, candidate: str) -> tuple[str | None, str | None]:
    def pooled_auroc(c):
        return float(np.mean([fair.CLASSIFIER_METRICS["auroc"].fn(y, s) for s in scores[c].T]))

    regime = df.drop_duplicates("condition").set_index("condition")["regime"].astype(str)
    bases = [c for c in scores if regime[c] == baseline]
    cands = [c for c in scores if regime[c] == candidate]
    base = max(bases, key=pooled_auroc) if bases else None
    same = [c for c in cands if base and c.split("@")[1] == base.split("@")[1]]
    cand = same[0] if same else (max(cands, key=pooled_auroc) if cands else None)
    return base, cand
