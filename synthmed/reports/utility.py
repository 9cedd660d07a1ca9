"""The utility report: utility.json, utility.md, a self-contained utility.html with plots, and predictions.csv.

predictions.csv has one row per (regime, seed, real_fraction, test case) with the columns `PREDICTION_COLUMNS`
(sex and age when the data set has them): the per-group layer of `synthmed bias` reads it, so the names are fixed.
"""

from __future__ import annotations

import base64
import csv
import html as H
import io
import json
from pathlib import Path

from synthmed.io import atomic_write
from synthmed.reports.comparison import CSS, md_table

PREDICTION_COLUMNS = ("regime", "seed", "real_fraction", "case", "y_true", "score", "sex", "age")
HEADLINE = ("auroc", "auprc", "rare_sens_at_spec90", "spec_at_sens90", "balanced_accuracy", "brier")
LABELS = {"auroc": "AUROC", "auprc": "AUPRC", "rare_sens_at_spec90": "rare sens @ spec 0.90",
          "spec_at_sens90": "spec @ sens 0.90", "balanced_accuracy": "balanced acc. @ 0.5", "brier": "Brier ↓"}


def _ci(stat: dict, digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def _signed(stat: dict) -> str:
    return f"{stat['mean']:+.3f} [{stat['ci_low']:+.3f}, {stat['ci_high']:+.3f}]"


def regime_rows(entry: dict) -> list[list[str]]:
    """One row per regime: every headline metric as mean [95 % CI], the sensitivity also with its exact interval."""
    rows = []
    for name, stats in entry["regimes"].items():
        sens = stats["rare_sens_at_spec90"]
        exact = "[{:.2f}, {:.2f}]".format(*sens["exact_ci"])
        rows.append([name + (" (best real)" if name == entry.get("best_baseline") else ""),
                     *(_ci(stats[m]) for m in HEADLINE[:3]), exact, *(_ci(stats[m]) for m in HEADLINE[3:])])
    return rows


REGIME_HEADER = ["regime", *(LABELS[m] for m in HEADLINE[:3]), "sens exact 95 % CI", *(LABELS[m] for m in HEADLINE[3:])]


def gain_rows(summary: dict) -> list[list[str]]:
    """One row per real fraction and synthetic regime: the gains over the best real baseline and the verdicts."""
    rows = []
    for entry in summary["fractions"]:
        for name, gain in entry["gains"].items():
            delong = gain["delong_per_seed"]
            shown = sum(d["ci_low"] > 0 for d in delong)
            rows.append([f"{entry['real_fraction']:g}", str(entry["n_real"]), str(entry["n_synth"]), name,
                         entry["best_baseline"], _signed(gain["auroc"]), gain["auroc"]["verdict"],
                         _signed(gain["auprc"]), _signed(gain["rare_sens_at_spec90"]),
                         f"{shown}/{len(delong)}"])
    return rows


GAIN_HEADER = ["real fraction", "n real", "n synth", "regime", "best real baseline", "AUROC gain [95 % CI]",
               "verdict", "AUPRC gain", "rare sens @ spec 0.90 gain", "seeds with DeLong CI > 0"]


def method(summary: dict) -> str:
    """How to read the numbers (the same text in the Markdown and the HTML)."""
    return (f"Test split: {summary['n_test']} real cases, {summary['n_test_rare']} of the rare class (label 1), "
            f"disjoint by subject from every training set (checked by id and image content). Each regime trains "
            f"the same classifier ({summary['classifier']}) with the same steps and batch size, {summary['seeds']} "
            f"seeds (initialization, sub-sample, batch order, synthetic draw). Values are means over seeds with a "
            f"95 % interval from {summary['n_boot']} paired bootstrap replicates over test cases (within class) and "
            f"seeds. A gain is measured against the best real baseline, re-chosen in every replicate; it is called "
            f"a gain only when its interval excludes 0, and an interval containing 0 shows no difference, not "
            f"equality. DeLong: per seed, the AUROC difference to the best real baseline on the same cases. The "
            f"exact interval of the rare-class sensitivity is Clopper-Pearson over the {summary['n_test_rare']} rare "
            f"test cases (at the seed-mean sensitivity; the threshold is chosen on the test cases themselves).")


def markdown(summary: dict) -> str:
    parts = [f"# Downstream utility: {summary['title']}", method(summary), "## Gain over the best real baseline",
             md_table(GAIN_HEADER, gain_rows(summary), numeric_from=5), "![gain vs real fraction](gain.png)"]
    for entry in summary["fractions"]:
        parts += [f"## Real fraction {entry['real_fraction']:g} ({entry['n_real']} real images, "
                  f"{entry['n_real_rare']} rare; {entry['n_synth']} synthetic, {entry['n_synth_rare']} rare)",
                  md_table(REGIME_HEADER, regime_rows(entry), numeric_from=1)]
    return "\n\n".join(parts) + "\n"


def gain_plot(summary: dict) -> bytes:
    """PNG: AUROC per regime and AUROC gain (with 95 % intervals) against the real fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = [e["real_fraction"] for e in summary["fractions"]]
    color = {name: f"C{i}" for i, name in enumerate(summary["regimes"])}  # one color per regime in both panels
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in summary["regimes"]:
        stats = [e["regimes"][name]["auroc"] for e in summary["fractions"]]
        left.errorbar(fractions, [s["mean"] for s in stats], capsize=3, marker="o", label=name, color=color[name],
                      yerr=[[s["mean"] - s["ci_low"] for s in stats], [s["ci_high"] - s["mean"] for s in stats]])
    for name in [r for r in summary["regimes"] if summary["fractions"][0]["gains"].get(r)]:
        stats = [e["gains"][name]["auroc"] for e in summary["fractions"]]
        right.errorbar(fractions, [s["mean"] for s in stats], capsize=3, marker="o", label=name, color=color[name],
                       yerr=[[s["mean"] - s["ci_low"] for s in stats], [s["ci_high"] - s["mean"] for s in stats]])
    right.axhline(0.0, color="k", lw=0.8)
    left.set(xlabel="real fraction", ylabel="AUROC (mean, 95 % CI)", title="AUROC per regime")
    right.set(xlabel="real fraction", ylabel="AUROC gain over best real baseline", title="Gain (95 % CI)")
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{H.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{H.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(summary: dict, png: bytes) -> str:
    """One offline HTML page: the tables and the plot inlined as a PNG data URI."""
    title = H.escape(f"Downstream utility: {summary['title']}")
    sections = "".join(
        f"<h2>Real fraction {e['real_fraction']:g} ({e['n_real']} real, {e['n_real_rare']} rare; {e['n_synth']} "
        f"synthetic)</h2>{_table(REGIME_HEADER, regime_rows(e))}" for e in summary["fractions"])
    image = "data:image/png;base64," + base64.b64encode(png).decode()
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style>"
            f"</head><body><h1>{title}</h1><p>{H.escape(method(summary))}</p>"
            f"<h2>Gain over the best real baseline</h2>{_table(GAIN_HEADER, gain_rows(summary))}"
            f"<img alt='gain vs real fraction' src='{image}'>{sections}</body></html>\n")


def predictions_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    present = [c for c in PREDICTION_COLUMNS if not rows or c in rows[0]]
    writer = csv.DictWriter(buffer, fieldnames=present, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(summary: dict, predictions: list[dict], folder: str | Path) -> Path:
    """utility.json, utility.md, utility.html, gain.png and predictions.csv in ``folder``; returns it."""
    folder = Path(folder)
    png = gain_plot(summary)
    atomic_write(folder / "gain.png", png)
    atomic_write(folder / "utility.json", json.dumps(summary, indent=2) + "\n")
    atomic_write(folder / "utility.md", markdown(summary))
    atomic_write(folder / "utility.html", to_html(summary, png))
    atomic_write(folder / "predictions.csv", predictions_csv(predictions))
    return folder
