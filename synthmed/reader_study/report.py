"""The reader-study report as Markdown and as self-contained HTML, from `analysis.analyze`'s dict."""

from __future__ import annotations

import html

POOLED_CAVEAT = ("The pooled row's exact columns count every reading as independent, but readings of one case by "
                 "several readers are not, so they are optimistic. The pooled verdict therefore rests on the two-way "
                 "(cases x readers) bootstrap interval quoted in the summary above; the per-reader rows are exact.")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(ci: list, fmt=_pct) -> str:
    return "-" if ci[0] is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _p(p: float | None) -> str:
    return "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


HEADER = ["reader", "n", "accuracy [95 % CI]", "p vs 50 %", "TOST p (equiv.)", "sensitivity [95 % CI]",
          "specificity [95 % CI]", "AUC [95 % CI]", "plausibility real / synth (diff. [95 % CI], p)", "verdict"]


def _row(name: str, s: dict) -> list[str]:
    pl = s["plausibility"]
    plaus = (f"{_num(pl['real']['mean'])} / {_num(pl['synthetic']['mean'])} "
             f"({_num(pl['difference'])} {_ci(pl['ci95'], _num)}, p {_p(pl['mann_whitney_p'])})")
    return [name, str(s["n"]), f"{_pct(s['accuracy']['estimate'])} {_ci(s['accuracy']['ci95'])}",
            _p(s["chance_test"]["p_value"]), _p(s["equivalence"]["p_value"]),
            f"{_pct(s['sensitivity']['estimate'])} {_ci(s['sensitivity']['ci95'])}",
            f"{_pct(s['specificity']['estimate'])} {_ci(s['specificity']['ci95'])}",
            f"{_num(s['auc']['estimate'])} {_ci(s['auc']['ci95'], _num)}", plaus, s["verdict"]["text"]]


def rows(result: dict) -> list[list[str]]:
    """The main table: one row per reader, then the pooled row."""
    out = [_row(r, s) for r, s in result["readers"].items()]
    return out + [_row(f"pooled ({result['n_readers']} readers)", result["pooled"])]


def agreement(result: dict) -> list[list[str]]:
    """Cohen's kappa per reader pair and Fleiss' kappa, each with n and a bootstrap 95 % CI."""
    out = [[f"Cohen: {a} vs {b}", str(k["n"]), _num(k["kappa"]), _ci(k["ci95"], _num)]
           for k in result["cohen_kappa"] for a, b in [k["readers"]]]
    f = result["fleiss_kappa"]
    return out + [[f"Fleiss: all {f['n_readers']} readers", str(f["n_cases"]), _num(f["kappa"]), _ci(f["ci95"], _num)]]


def summary(result: dict) -> str:
    """The one sentence to quote, with its n and the interval the verdict rests on."""
    p, c = result["pooled"], result["pooled"]["clustered"]
    return (f"Pooled over {result['n_readers']} readers and {result['n_cases']} cases ({result['n_real']} real, "
            f"{result['n_synthetic']} synthetic; n = {p['n']} readings): accuracy {_pct(c['estimate'])}, 95 % CI "
            f"{_ci(c['ci95'])} and 90 % CI {_ci(c['ci90'])} (two-way bootstrap over cases and readers); "
            f"{p['verdict']['text']}.")


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in body])


def _method(result: dict) -> str:
    m = f"{100 * result['margin']:g}"
    return (f"Accuracy, sensitivity (synthetic called synthetic) and specificity (real called real) with exact "
            f"Clopper-Pearson 95 % intervals; exact two-sided binomial test against 50 %; equivalence by two one-sided "
            f"exact binomial tests (TOST) with margin +-{m} points at alpha {result['alpha']}: only a significant TOST "
            f"allows \"indistinguishable\", a non-significant difference alone reads \"not shown to differ\". The pooled "
            f"verdict uses a two-way bootstrap over cases and readers (2000 resamples, seed 0): different when its 95 % "
            f"interval excludes 50 %, equivalent when its 90 % interval lies inside the margin. AUC of "
            f"the confidence-weighted answer (-5 sure real .. +5 sure synthetic) with the Hanley-McNeil interval. "
            f"Plausibility (1-5): Welch interval of the mean difference, Mann-Whitney U test. Kappa intervals: "
            f"percentile bootstrap over cases (2000 resamples, seed 0).")


def markdown(result: dict) -> str:
    run = result.get("run_id") or "(images not from a synthmed run)"
    return "\n\n".join([
        f"# Reader study: {result.get('title') or result['study_id']}",
        f"Study `{result['study_id']}`, generator run `{run}`.", summary(result),
        "## Real or synthetic", _md_table(HEADER, rows(result)), POOLED_CAVEAT,
        "## Agreement between readers", _md_table(["pair", "n cases", "kappa", "95 % CI"], agreement(result)),
        "## Method", _method(result)]) + "\n"


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th scope=\"col\">{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>"


def to_html(result: dict) -> str:
    """A self-contained page (inline CSS, no script, no external asset)."""
    title = html.escape(f"Reader study: {result.get('title') or result['study_id']}")
    css = ("body{font-family:system-ui,sans-serif;max-width:80rem;margin:auto;padding:1rem}"
           "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #bbb;padding:.3rem .5rem;"
           "text-align:left;vertical-align:top}th{background:#eee}")
    parts = [f"<h1>{title}</h1>",
             (f"<p>Study <code>{html.escape(result['study_id'])}</code>, generator run "
              f"<code>{html.escape(result.get('run_id') or '-')}</code>.</p>"),
             f"<p><strong>{html.escape(summary(result))}</strong></p>",
             "<h2>Real or synthetic</h2>", _html_table(HEADER, rows(result)), f"<p>{html.escape(POOLED_CAVEAT)}</p>",
             "<h2>Agreement between readers</h2>", _html_table(["pair", "n cases", "kappa", "95 % CI"], agreement(result)),
             "<h2>Method</h2>", f"<p>{html.escape(_method(result))}</p>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{css}</style></head><body>{''.join(parts)}</body></html>\n")
