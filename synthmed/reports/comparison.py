"""Rendering of `synthmed compare` reports: a markdown page for papers, a self-contained HTML page, a JSON record.

The markdown table is the one to paste: one row per configuration, metric keys as columns (with the direction that
is better), `n` runs per row, mean +- sample std, the best mean of a column in bold.
"""

from __future__ import annotations

import base64
import html as H
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

from synthmed.metrics import names
from synthmed.metrics.directions import REFERENCES, TARGETS, direction
from synthmed.tracking import tags as tk

KNOWN_KEYS = frozenset(names.all_names().values())
ARROWS = {"minimize": " ↓", "maximize": " ↑", "target": " ≈real"}
REAL_ROW = "real data"  # the reference row: a target metric's value on real images (same n, same code)


@dataclass
class Report:
    """Everything a report shows; `groups` are `synthmed.compare.Group`s (rows), `columns` metric keys."""

    experiment: str
    tracking_uri: str
    groups: list
    columns: list[str]
    curves: list[tuple[str, Path]]
    grids: list[tuple]  # (group, entry, png path, step)
    skipped: list[str]


def group_title(group) -> str:
    return f"{group.model} ({group.label})" if group.label else group.model


def fmt(stats: tuple[float, float | None, int] | None, n: int) -> str:
    """`mean ± std` with 4 significant digits (std: 2), `(k/n)` when only k of the n runs have the metric."""
    if stats is None:
        return "–"
    m, s, k = stats
    text = f"{m:.4g}" if s is None else f"{m:.4g} ± {s:.2g}"
    return text if k == n else f"{text} ({k}/{n})"


def shown_columns(report: Report) -> list[str]:
    """The table's metric columns: real-data values go to the reference row instead."""
    return [c for c in report.columns if c not in REFERENCES]


def best_groups(report: Report, column: str) -> set[str]:
    """Keys of the groups with the best mean in `column` (none without a direction or with one row).

    A target metric's best is the group whose mean distance to the real data's value (`*_gap`, per run) is
    smallest: the lowest MS-SSIM diversity is pure noise, not the best generator.
    """
    better = direction(column)
    if better == "target":
        column, better = TARGETS[column][1], "minimize"
    means = {g.key: st[0] for g in report.groups if (st := g.stats(column)) is not None}
    if better is None or len(means) < 2:
        return set()
    target = min(means.values()) if better == "minimize" else max(means.values())
    return {k for k, v in means.items() if v == target}


def reference_row(report: Report) -> list[str] | None:
    """`real data` with each target metric's real value (mean ± std over the runs that logged it), or None."""
    cells, found = [], False
    for c in shown_columns(report):
        values = [e.metrics[TARGETS[c][0]] for g in report.groups for e in g.entries
                  if c in TARGETS and TARGETS[c][0] in e.metrics]
        found |= bool(values)
        cells.append(fmt((mean(values), stdev(values) if len(values) > 1 else None, len(values)), len(values))
                     if values else "–")
    return [REAL_ROW, "same n, same code", "–", *cells] if found else None


RANKING = (names.FID, names.FD_DOMAIN)  # rows are ordered by the first fidelity metric any run has


def ranked(report: Report) -> tuple[list, str | None]:
    """The groups best first by FID, or by the in-domain Frechet distance where no run has FID (no Inception
    weights); groups without that metric keep their order at the end. Also returns the key ranked by."""
    key = next((k for k in RANKING if any(g.stats(k) for g in report.groups)), None)
    if key is None:
        return list(report.groups), None
    return sorted(report.groups, key=lambda g: (g.stats(key) is None, g.stats(key)[0] if g.stats(key) else 0)), key


def table_rows(report: Report, bold: tuple[str, str]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the main table; best cells wrapped in `bold`; the real-data reference row last."""
    columns = shown_columns(report)
    header = ["model", "config", "n", *(c + ARROWS.get(direction(c) or "", "") for c in columns)]
    best = {c: best_groups(report, c) for c in columns}
    rows = []
    for g in ranked(report)[0]:
        n = len(g.entries)
        cells = [fmt(g.stats(c), n) for c in columns]
        cells = [f"{bold[0]}{cell}{bold[1]}" if g.key in best[c] else cell for c, cell in zip(columns, cells)]
        rows.append([g.model, g.label or "–", str(n), *cells])
    reference = reference_row(report)
    return header, rows + ([reference] if reference else [])


def run_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["model", "config", "seed", "run", "status", "config hash", *report.columns]
    rows = []
    for g in report.groups:
        for e in g.entries:
            rows.append([g.model, g.label or "–", e.seed, e.run.info.run_name or e.run.info.run_id,
                         e.run.info.status, e.run.data.tags.get(tk.CONFIG_HASH, "")[:12],
                         *(f"{e.metrics[c]:.4g}" if c in e.metrics else "–" for c in report.columns)])
    return header, rows


def md_table(header: list[str], rows: list[list[str]], numeric_from: int) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(esc(c) for c in line) + " |" for line in lines)


def summary(report: Report) -> str:
    n_runs = sum(len(g.entries) for g in report.groups)
    return (f"{n_runs} runs in {len(report.groups)} configurations of MLflow experiment `{report.experiment}` "
            f"({report.tracking_uri}), {time.strftime('%Y-%m-%d %H:%M')}. One row per configuration: runs whose "
            "recorded configs differ only in `seed` (and settings that interpolate it); values are the final "
            "metrics (`metrics/final.json`) as mean ± sample std over the row's `n` runs. ↓ lower is better, "
            "↑ higher is better, ≈real: closest to the `real data` row (the same statistic on as many real "
            "images) is best; the best mean is in bold. "
            + (f"Rows are ranked by `{ranked(report)[1]}`." if ranked(report)[1] else "No fidelity metric to rank by."))


def main_table(report: Report) -> str:
    """The markdown table to paste into a paper draft."""
    return md_table(*table_rows(report, ("**", "**")), numeric_from=2)


def markdown(report: Report, out: Path) -> str:
    """The report as markdown; images are linked relative to `out` (where report.md is written)."""
    parts = [f"# Comparison: {report.experiment}", summary(report), "## Final metrics", main_table(report),
             "## Runs", md_table(*run_rows(report), numeric_from=6), "## Metric curves"]
    parts += [f"![{key}]({png.relative_to(out).as_posix()})" for key, png in report.curves] or ["(none logged)"]
    parts.append("## Final sample grids")
    for start in range(0, len(report.grids), 4):  # four grids per row keeps the page readable
        chunk = report.grids[start:start + 4]
        header = [f"{group_title(g)}, seed {e.seed}" for g, e, _, _ in chunk]
        images = [f"![{e.run.info.run_id[:8]}]({p.relative_to(out).as_posix()})" for _, e, p, _ in chunk]
        captions = [f"step {step}, run `{e.run.info.run_id[:8]}`" for _, e, _, step in chunk]
        parts.append(md_table(header, [images, captions], numeric_from=len(header)).replace("---:", "---"))
    if not report.grids:
        parts.append("(none logged)")
    if report.skipped:
        parts += ["## Skipped runs", "\n".join(f"- {s}" for s in report.skipped)]
    return "\n\n".join(parts) + "\n"


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{H.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
       "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:nth-child(-n+2),"
       "th:nth-child(-n+2){text-align:left}.row{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}"
       "figcaption{font-size:85%;color:#444}img.grid{image-rendering:pixelated;width:256px}")


def html(report: Report) -> str:
    """The report as one HTML file with every image inlined (mail it, attach it, open it offline)."""
    header, rows = table_rows(report, ("<b>", "</b>"))
    rows = [[H.escape(c) if i < 3 else c for i, c in enumerate(r)] for r in rows]
    run_header, runs = run_rows(report)
    runs = [[H.escape(c) for c in r] for r in runs]
    curves = "".join(f'<figure><img src="{_img(p)}" alt="{H.escape(k)}"></figure>' for k, p in report.curves)
    grids = "".join(
        f'<figure><img class="grid" src="{_img(p)}"><figcaption>{H.escape(group_title(g))}, seed '
        f"{H.escape(e.seed)}<br>step {step}, run {e.run.info.run_id[:8]}</figcaption></figure>"
        for g, e, p, step in report.grids)
    skipped = "".join(f"<li>{H.escape(s)}</li>" for s in report.skipped)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Comparison: {H.escape(report.experiment)}"
            f"</title><style>{CSS}</style></head><body><h1>Comparison: {H.escape(report.experiment)}</h1>"
            f"<p>{H.escape(summary(report))}</p><h2>Final metrics</h2>{_html_table(header, rows)}"
            f"<h2>Runs</h2>{_html_table(run_header, runs)}<h2>Metric curves</h2><div class='row'>{curves}</div>"
            f"<h2>Final sample grids</h2><div class='row'>{grids}</div>"
            + (f"<h2>Skipped runs</h2><ul>{skipped}</ul>" if skipped else "") + "</body></html>\n")


def as_dict(report: Report) -> dict:
    """The machine-readable report (report.json): rows with per-metric mean/std/n and their runs."""
    def stats(g, c):
        st = g.stats(c)
        return None if st is None else {"mean": st[0], "std": st[1], "n": st[2]}

    table = [{"model": g.model, "config": g.label, "differs": g.differs, "group": g.key, "n": len(g.entries),
              "seeds": [e.seed for e in g.entries], "runs": [e.run.info.run_id for e in g.entries],
              "metrics": {c: stats(g, c) for c in report.columns if g.stats(c) is not None}} for g in report.groups]
    order, key = ranked(report)
    table.sort(key=lambda row: [g.key for g in order].index(row["group"]))
    return {"experiment": report.experiment, "tracking_uri": report.tracking_uri, "columns": report.columns,
            "table": table, "skipped": report.skipped, "ranked_by": key,
            "best": {c: sorted(best_groups(report, c)) for c in shown_columns(report)},
            "reference": reference_row(report)}
