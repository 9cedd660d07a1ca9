"""Rendering of `synthmed bias` reports: `bias.md` (tables, linked plots), a self-contained `bias.html` (plots
inlined as PNG data URIs, no third-party assets) and the plots themselves (per-group bars with 95 % intervals).

Wording follows the interval, never the point value alone: a gap whose interval holds 0 is "no gap shown", not
"equal"; one whose interval excludes 0 is reported as a gap.
"""

from __future__ import annotations

import base64
import html as H
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the headless backend is chosen

from synthmed.io import atomic_path, atomic_write  # noqa: E402

DOWNSTREAM_METRICS = ("auroc", "sensitivity", "fnr", "fpr")


def num(x, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def ci(entry: dict | None, digits: int = 3) -> str:
    """`value [low, high]`, or `NaN (reason)` for an undefined value."""
    if not entry:
        return "–"
    if entry.get("undefined"):
        return f"NaN ({entry['undefined']})"
    v, lo, hi = entry.get("value"), entry.get("low"), entry.get("high")
    return f"{num(v, digits)} [{num(lo, digits)}, {num(hi, digits)}]" if lo is not None else num(v, digits)


def verdict(entry: dict, what: str = "gap") -> str:
    """What an interval of a difference (or of a change, ``what="change"``) shows."""
    lo, hi = entry.get("low"), entry.get("high")
    if lo is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "no interval"
    return f"{what} shown" if lo > 0 or hi < 0 else f"no {what} shown (interval holds 0)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


# ---------------------------------------------------------------------------------------------------- sections
def representation_md(rep: dict) -> list[str]:
    out = ["## 1. Representation",
           "Groups of the generated images as the in-domain reader reads them, against real held-out images read "
           "by the same reader (its error then affects both sides alike) and against the true training shares. "
           "The reader floor is the distance of real held-out images (read) to the training shares: what a "
           "perfect generator would score. A TVD is a distance: never below 0, and its bootstrap interval is biased "
           "upward, so it cannot contain 0 even for a perfect generator; read it against the reader floor, and take "
           "the per-group gaps and the chi-squared p as the tests of a difference.", ""]
    for name, r in rep.items():
        vs, train = r["vs_heldout_read"], {g["group"]: g for g in r["vs_train"]["groups"]}
        rows = [[g["group"], str(g["n_fake"]), num(g["share_fake"]), str(g["n_real"]), num(g["share_real"]),
                 ci(g["gap"]), verdict(g["gap"]), num(train[g["group"]]["share_real"]),
                 ci(r["reader_accuracy"].get(g["group"]))] for g in vs["groups"]]
        out += [f"### by {name}", *_table(["group", "n gen.", "share gen. (read)", "n real", "share real (read)",
                                             "gap [95% CI]", "reading", "share train (true)", "reader accuracy [95% CI]"],
                                            rows), "",
                f"TVD generated vs real held-out (read): {ci(vs['tvd'])}, chi-squared {num(vs['chi2']['statistic'])} "
                f"(dof {vs['chi2']['dof']}, p = {num(vs['chi2']['p_value'])}); generated (read) vs training "
                f"(true): TVD {ci(r['vs_train']['tvd'])}, p = {num(r['vs_train']['chi2']['p_value'])}; reader floor "
                f"TVD {ci(r['reader_floor']['tvd'])}.", ""]
    return out


def conditioning_md(cond: dict) -> list[str]:
    out = ["## Conditioning per requested group", "Read back from the samples by the in-domain readers "
           "(accuracy: share read as requested; rare-class rate: share of label-1 requests read as label 1).", ""]
    for name, groups in cond.items():
        keys = sorted({k for g in groups.values() for k in g})
        rows = [[g, *(ci(v.get(k)) if k != "age_mae" else num(v.get(k, {}).get("value")) for k in keys)]
                for g, v in groups.items()]
        out += [f"### by {name}", *_table(["requested group", *keys], rows), ""]
    return out


def rare_class_md(rare: dict) -> list[str]:
    out = ["## Rare class per group",
           "Share of images read as the rare class (label 1) by the in-domain lesion reader, generated vs real "
           "held-out, both grouped by the same readers; difference with a Newcombe 95 % interval.", ""]
    for name, groups in rare.items():
        rows = [[g, str(v["fake"]["n"]), ci(v["fake"]), str(v["real"]["n"]), ci(v["real"]),
                 ci(v.get("difference")), verdict(v["difference"]) if v.get("difference") else "–"]
                for g, v in groups.items()]
        out += [f"### by {name}", *_table(["group", "n gen.", "rate gen. [95% CI]", "n real", "rate real [95% CI]",
                                             "difference [95% CI]", "reading"], rows), ""]
    return out


def fidelity_md(fid: dict, label_source: str | None = None) -> list[str]:
    out = ["## 2. Fidelity per group",
           "In-domain features; generated images grouped by their reading, real held-out images by their truth. "
           "KID is unbiased at small n (mean ± std over subsets); the Frechet distance is biased by n, so it is "
           "given only where both sides have more images than feature dimensions and compares only groups of "
           "similar n; precision/recall/coverage as the metric suite; "
           "memorization: share of generated images nearer a training image than held-out images usually are "
           "(Wilson 95 % interval).", ""]
    if label_source:
        out += [f"Group x label cells: generated images by their class ({label_source}), real held-out images by "
                f"their true class; the KID gap of the cells compares groups within one class.", ""]
    for name, f in fid.items():
        out += [f"### by {name}", *_fidelity_table(f["groups"]), "", _kid_gap_line("", f["kid_gap"], f["excluded"]),
                ""]
        if "by_label" in f:
            cells = f["by_label"]
            out += [f"#### by {name} x label", *_fidelity_table(cells["groups"], label=True), ""]
            out += [_kid_gap_line(f"label {lab}: ", gap, [e for e in cells["excluded"]
                                                         if cells["groups"][e["group"]]["label"] == lab])
                    for lab, gap in cells["kid_gap"].items()] + [""]
    return out


def _fidelity_table(rows: dict, label: bool = False) -> list[str]:
    body = []
    for g, v in rows.items():
        kid = f"{num(v['kid']['value'])} ± {num(v['kid']['std'], 2)}" if v.get("kid") else v.get("skipped", "–")
        where = [v["group"], v["label"]] if label else [g]
        body.append([*where, str(v["n_fake"]), str(v["n_real"]), kid, num(v.get("fd_domain")),
                     num(v.get("precision")), num(v.get("recall")), num(v.get("coverage")),
                     ci(v.get("memorization_rate"))])
    return _table([*(["group", "label"] if label else ["group"]), "n gen.", "n real", "KID", "FD (in-domain)",
                   "precision", "recall", "coverage", "memorization rate [95% CI]"], body)


def _kid_gap_line(prefix: str, gap: dict, excluded: list[dict]) -> str:
    left = "; ".join(f"{e['group']} ({e['why']})" for e in excluded)
    return (f"{prefix}KID difference (largest - smallest scored group): {num(gap['difference'])}, worst group "
            f"{gap['worst_group'] or '–'}; compared: {', '.join(gap['groups_compared']) or 'none'}"
            + (f"; left out of the gap (counts above): {left}." if left else "."))


def downstream_md(down: dict) -> list[str]:
    out = ["## 3. Downstream per group"]
    if "skipped" in down:
        return [*out, "", f"Skipped: {down['skipped']}", ""]
    out += [f"Classifier predictions from {down.get('source', 'the utility run')} on {down['n_cases']} test cases; "
            f"conditions "
            f"{', '.join(down['conditions'])} (seeds: {down['n_seeds']}). Baseline `{down['baseline']}`, candidate "
            f"`{down['candidate']}`. A case is flagged at score >= threshold; FNR is underdiagnosis.", ""]
    for name, d in down["by_grouping"].items():
        out.append(f"### by {name}")
        for cond in d["gaps"]:
            rows = [[g["group"], str(g["n"]), str(g["n_pos"]), *(ci(g["values"][cond][m]) for m in DOWNSTREAM_METRICS),
                     "yes" if g["included"] else f"no: {g['excluded_because']}"] for g in d["groups"]]
            out += [f"**{cond}**", "", *_table(["group", "n", "n pos", *DOWNSTREAM_METRICS, "in gaps"], rows), ""]
        rows = [[cond, m, ci(s["difference"]), ci(s["ratio"]), str(s["worst_group"]), verdict(s["difference"])]
                for cond, per in d["gaps"].items() for m, s in per.items()]
        out += ["Gaps (over the groups in gaps):", "", *_table(["condition", "metric", "difference [95% CI]",
                                                                  "ratio [95% CI]", "worst group", "reading"], rows), ""]
        for pair, per in d["changes"].items():
            rows = [[m, ci(c["difference"]), ci(c["ratio"]), verdict(c["difference"], "change")]
                    for m, c in per.items()]
            out += [f"Gap change {pair} (paired on the same cases):", "",
                    *_table(["metric", "change of difference [95% CI]", "change of ratio [95% CI]", "reading"], rows), ""]
    return out


# ------------------------------------------------------------------------------------------------------- plots
def _bars(ax, labels, values, lows, highs, title, ylabel):
    x = range(len(labels))
    err = [[max(v - lo, 0) if math.isfinite(lo) else 0 for v, lo in zip(values, lows)],
           [max(hi - v, 0) if math.isfinite(hi) else 0 for v, hi in zip(values, highs)]]
    ax.bar(x, [v if math.isfinite(v) else 0 for v in values], yerr=err, capsize=4, color="#4c72b0")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)


def plots(report: dict, folder: Path) -> list[tuple[str, Path]]:
    """One PNG per grouping: representation gaps, per-group KID, and downstream FNR per condition (95 % CI)."""
    out = []
    for name, rep in report["representation"].items():
        panels = [("representation gap (gen. - real share)", rep["vs_heldout_read"]["groups"])]
        down = report.get("downstream", {}).get("by_grouping", {}).get(name)
        conds = list(down["gaps"]) if down else []
        fig, axes = plt.subplots(1, 2 + len(conds), figsize=(4 * (2 + len(conds)), 3.2), squeeze=False)
        g = panels[0][1]
        _bars(axes[0][0], [x["group"] for x in g], [x["gap"]["value"] for x in g], [x["gap"]["low"] for x in g],
              [x["gap"]["high"] for x in g], panels[0][0], "share gap")
        fid = report["fidelity"][name]["groups"]
        k = [(grp, v["kid"]) for grp, v in fid.items() if v.get("kid")]
        _bars(axes[0][1], [grp for grp, _ in k], [v["value"] for _, v in k], [v["value"] - v["std"] for _, v in k],
              [v["value"] + v["std"] for _, v in k], "KID per group (± std)", "KID")
        for ax, cond in zip(axes[0][2:], conds):
            vals = [gr["values"][cond]["fnr"] for gr in down["groups"]]
            _bars(ax, [gr["group"] for gr in down["groups"]], [v["value"] for v in vals], [v["low"] for v in vals],
                  [v["high"] for v in vals], f"FNR, {cond}", "false-negative rate")
        if conds:  # one FNR scale across conditions, so that bars compare
            top = max(ax.get_ylim()[1] for ax in axes[0][2:])
            for ax in axes[0][2:]:
                ax.set_ylim(0, top)
        fig.suptitle(f"by {name}", fontsize=10)
        fig.tight_layout()
        path = folder / f"bias_{_slug(name)}.png"
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        out.append((name, path))
    return out


# ------------------------------------------------------------------------------------------------------ output
def markdown(report: dict, images: list[tuple[str, Path]]) -> str:
    head = [f"# Bias across patient groups: {report['run']['name']}", "",
            f"Run `{report['run']['id']}` (config {report['run']['config_hash']}); {report['n_fake']} generated "
            f"images (seed {report['seed']}), {report['n_real']} real held-out images ({report['split']}), "
            f"{report['n_train']} training images. Groupings: {', '.join(report['by'])}; age bands "
            f"{report['age_bands']}. Intervals: percentile 95 % bootstrap ({report['n_boot']} replicates), "
            f"stratified by group (and by label inside a group downstream). A difference whose interval holds 0 "
            f"is not shown to exist; it is not shown to be absent either.", ""]
    body = representation_md(report["representation"])
    if report.get("conditioning"):
        body += conditioning_md(report["conditioning"])
    if report.get("rare_class"):
        body += rare_class_md(report["rare_class"])
    body += fidelity_md(report["fidelity"], report.get("fidelity_label_source"))
    body += downstream_md(report["downstream"])
    body += ["## Plots", "", *(f"![by {n}]({p.name})" for n, p in images), ""]
    return "\n".join(head + body)


def _inline(md_text: str, images: list[tuple[str, Path]]) -> str:
    """A minimal Markdown -> HTML for our own tables, headings and images (PNG inlined: works offline)."""
    uri = {p.name: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() for _, p in images}
    lines, html, in_table = md_text.splitlines(), [], False
    for line in lines:
        if line.startswith("|"):
            cells = [H.escape(c.strip()) for c in line.strip("|").split("|")]
            if set(line) <= set("|-"):
                continue
            tag = "th" if not in_table else "td"
            html.append(("<table>" if not in_table else "") + "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells)
                        + "</tr>")
            in_table = True
            continue
        if in_table:
            html.append("</table>")
            in_table = False
        if m := re.match(r"!\[(.*)\]\((.*)\)", line):
            html.append(f'<img alt="{H.escape(m[1])}" src="{uri.get(m[2], "")}">')
        elif m := re.match(r"(#+) (.*)", line):
            html.append(f"<h{len(m[1])}>{H.escape(m[2])}</h{len(m[1])}>")
        elif line.strip():
            html.append(f"<p>{H.escape(line.replace('**', '').replace('`', ''))}</p>")
    if in_table:
        html.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>bias report</title><style>{style}</style>"
            f"</head><body>{''.join(html)}</body></html>")


def finite(node):
    """NaN and infinities as null: strict JSON (each undefined value carries its reason next to it)."""
    if isinstance(node, dict):
        return {str(k): finite(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [finite(v) for v in node]
    if isinstance(node, float) and not math.isfinite(node):
        return None
    return node


def write(report: dict, folder: Path) -> dict[str, Path]:
    """`bias.json`, `bias.md`, `bias.html` and the plots into `folder` (atomically). Returns the paths."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    images = plots(report, folder)
    md_text = markdown(report, images)
    paths = {"json": folder / "bias.json", "md": folder / "bias.md", "html": folder / "bias.html"}
    atomic_write(paths["json"], json.dumps(finite(report), indent=2, default=str, allow_nan=False))
    atomic_write(paths["md"], md_text)
    atomic_write(paths["html"], _inline(md_text, images))
    return paths
