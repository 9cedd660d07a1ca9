"""`synthmed compare experiment=<name>`: a report of runs side by side (table, curves, final sample grids).

Rows of the table are *configurations*: runs whose recorded semantic configs (what the config hash covers) are
equal except for `seed` form one row with mean +- sample std (ddof=1) over the seeds and `n` runs. Settings that
interpolate the seed (`dataset.datamodule.seed: ${seed}`) are resolved in a recorded config; a `*seed` key is
treated as derived from `seed` when it equals `seed` in every compared run. (Grouping by the `synthmed.model` tag
alone would pool runs of different learning rates into one mean; this cannot.) The report is written as
`report.md` (images linked from `curves/` and `grids/`), a self-contained `report.html` (images inlined as base64)
and `report.json`, and logged as artifacts `report/` of a new MLflow run tagged `synthmed.report=compare` in the
same experiment (itself skipped by later reports, as are `synthmed reproduce` runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from synthmed.config import register_resolvers
from synthmed.io import atomic_write
from synthmed.metrics.directions import direction
from synthmed.reports import comparison as R
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.confighash import canonical_json, semantic_config, short_hash
from synthmed.tracking.runinfo import final_grid, final_metrics, key_rank, recorded_config
from synthmed.tracking.sweep import experiment_id

OPTIONS = {"experiment": None, "runs": None, "out": None, "paths.root": None, "tracking_uri": None,
           "include_unfinished": "false", "include_parents": "false", "log": "true"}
USAGE = ("usage: synthmed compare experiment=<name> [runs=<id|hash>,...] [out=DIR] [paths.root=DIR] "
         "[tracking_uri=URI] [include_unfinished=true] [include_parents=true] [log=false]")


@dataclass
class Entry:
    """One run in the report."""

    run: Run
    metrics: dict[str, float]
    seed: str
    flat: dict[str, str]  # the flattened semantic config (seed included)
    group: str = ""  # 12 hex digits identifying the config without the seed: the row
    repeats: list = field(default_factory=list)  # older runs of the same config hash and seed, not counted

    @property
    def model(self) -> str:
        return self.run.data.tags.get(tk.MODEL, "?")


@dataclass
class Group:
    """Runs with one configuration (all but the seed), i.e. one table row."""

    key: str
    model: str
    label: str
    entries: list[Entry]
    differs: list[str] = field(default_factory=list)  # every `key=value` telling this row apart from its model's

    def stats(self, metric: str) -> tuple[float, float | None, int] | None:
        """(mean, sample std or None for one value, count) of `metric` over the group's runs."""
        values = [e.metrics[metric] for e in self.entries if metric in e.metrics]
        if not values:
            return None
        return mean(values), (stdev(values) if len(values) > 1 else None), len(values)


def parse(argv: list[str]) -> dict[str, str | None]:
    opts = dict(OPTIONS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in OPTIONS:
            raise SystemExit(f"synthmed compare: unknown argument '{arg}'\n{USAGE}")
        opts[key] = value
    if not opts["experiment"] and not opts["runs"]:
        raise SystemExit(f"synthmed compare: give experiment=<name> or runs=<id,...>\n{USAGE}")
    return opts


def truthy(value: str | None) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def select_runs(client: MlflowClient, opts: dict) -> tuple[list[Run], list[str]]:
    """The runs to report and a note per skipped run (parents, reports, unfinished)."""
    if opts["runs"]:
        runs = [mt.find_run(client, ref.strip()) for ref in opts["runs"].split(",") if ref.strip()]
        if opts["experiment"]:
            runs = [r for r in runs if client.get_experiment(r.info.experiment_id).name == opts["experiment"]]
    else:
        exp = client.get_experiment_by_name(opts["experiment"])
        if exp is None:
            raise LookupError(f"no MLflow experiment '{opts['experiment']}' in {client.tracking_uri}")
        runs = client.search_runs([exp.experiment_id], max_results=5000, order_by=["attributes.start_time ASC"])
    kept, skipped = [], []
    for run in runs:
        tags, name = run.data.tags, run.info.run_name
        if tk.REPORT in tags:
            skipped.append(f"{name}: a report")
        elif tk.REPRODUCES in tags:  # a second measurement of one run would shrink the std
            skipped.append(f"{name}: a reproduction of {tags[tk.REPRODUCES]}")
        elif tk.EVALUATES in tags and not opts["runs"]:  # likewise, and maybe under other settings (guidance)
            skipped.append(f"{name}: an evaluation of {tags[tk.EVALUATES]} (list it in runs= to report it)")
        elif tags.get(tk.SWEEP) == "parent" and not truthy(opts["include_parents"]):
            skipped.append(f"{name}: parent sweep run (include_parents=true to keep)")
        elif run.info.status != "FINISHED" and not truthy(opts["include_unfinished"]):
            skipped.append(f"{name}: {run.info.status} (include_unfinished=true to keep)")
        else:
            kept.append(run)
    return kept, skipped


def describe(client: MlflowClient, run: Run) -> Entry:
    """Final metrics, seed and flattened semantic config of one run."""
    cfg = recorded_config(client, run.info.run_id)
    if cfg is not None:
        flat = mt.flatten(semantic_config(cfg))
    else:  # no recorded config: the params are the flattened resolved config
        skip = ("paths.", "logger.", "callbacks.", "hydra.", "override.")
        flat = {k: v for k, v in run.data.params.items() if not k.startswith(skip)}
    return Entry(run, final_metrics(client, run), flat.get("seed", "?"), flat)


def seed_keys(entries: list[Entry]) -> set[str]:
    """`seed` and every `*seed` key that equals it in every run (interpolations of `${seed}`)."""
    # Judged on the runs that record a seed and the key: a run without them (a sweep parent kept with
    # include_parents=true) must not turn `${seed}` interpolations into configuration keys and split the seeds.
    seeded = [e for e in entries if e.seed != "?"]
    candidates = {k for e in seeded for k in e.flat if k.rsplit(".", 1)[-1].endswith("seed")}
    return {"seed"} | {k for k in candidates if all(e.flat[k] == e.seed for e in seeded if k in e.flat)}


def drop_repeats(entries: list[Entry]) -> tuple[list[Entry], list[str]]:
    """One sample per (config hash, seed): a config run twice (two sweeps) is one sample, not two, or the spread
    shrinks. The newest run is kept; each repeat is named in the returned notes."""
    def key(e: Entry) -> tuple[str, str]:
        return e.run.data.tags.get(tk.CONFIG_HASH) or canonical_json(e.flat), e.seed

    same: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:  # in start-time order: the last of each key is the newest
        same.setdefault(key(e), []).append(e)
    kept = [e for e in entries if e is same[key(e)][-1]]
    for e in kept:
        e.repeats = [r.run for r in same[key(e)][:-1]]
    notes = [f"{r.info.run_name or r.info.run_id}: repeats {e.run.info.run_name or e.run.info.run_id} (same config "
             f"hash {short_hash(e.run.data.tags.get(tk.CONFIG_HASH, '')) or '?'} and seed {e.seed}; counted once)"
             for e in kept for r in e.repeats]
    return kept, notes


def group_entries(entries: list[Entry]) -> list[Group]:
    """Groups in first-seen order, labelled by the config keys that tell runs of one model apart."""
    drop = seed_keys(entries)
    for e in entries:
        kept = {k: v for k, v in e.flat.items() if k not in drop} | {tk.MODEL: e.model}
        e.group = short_hash(hashlib.sha256(canonical_json(kept).encode()).hexdigest())
    groups: dict[str, Group] = {}
    for e in entries:
        groups.setdefault(e.group, Group(e.group, e.model, "", [])).entries.append(e)
    for model in {g.model for g in groups.values()}:
        same = [g for g in groups.values() if g.model == model]
        keys = {k for g in same for k in g.entries[0].flat} - drop if len(same) > 1 else set()
        differing = sorted((k for k in keys if len({g.entries[0].flat.get(k) for g in same}) > 1),
                           key=lambda k: (not k.startswith("dataset.name"), len(k), k))
        for g in same:
            parts = [f"{k.removeprefix('model.')}={g.entries[0].flat.get(k, '-')}" for k in differing]
            g.differs = parts  # all of them in report.json; the table shows four and says how many are left out
            g.label = ", ".join(parts[:4]) + (f", +{len(parts) - 4} more (report.json)" if len(parts) > 4 else "")
    return list(groups.values())


def metric_columns(entries: Iterable[Entry]) -> list[str]:
    return sorted({k for e in entries for k in e.metrics}, key=key_rank)


def curves(client: MlflowClient, groups: list[Group], out: Path) -> list[tuple[str, Path]]:
    """One PNG per metric key from names.py that some run logged: value over step, one line per run."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    keys = sorted({k for g in groups for e in g.entries for k in e.run.data.metrics if k in R.KNOWN_KEYS},
                  key=key_rank)
    written = []
    for key in keys:
        fig = Figure(figsize=(6, 3.6), dpi=110)
        ax = fig.subplots()
        for i, g in enumerate(groups):
            labelled = False  # one legend entry per configuration, on its first run that logged `key`
            for e in (e for e in g.entries if key in e.run.data.metrics):
                hist = sorted(client.get_metric_history(e.run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
                ax.plot([m.step for m in hist], [m.value for m in hist], color=f"C{i % 10}", alpha=0.8,
                        marker="o" if len(hist) < 20 else None, ms=3, label=None if labelled else R.group_title(g))
                labelled = True
        # Losses of different families are different objectives: only evaluation metrics get a "better" side.
        better = {"minimize": " (lower is better)", "maximize": " (higher is better)"}.get(
            direction(key) if key.startswith("val/") else None, "")
        ax.set(xlabel="step", ylabel=key, title=key + better)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "curves" / f"{key.replace('/', '_')}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        written.append((key, path))
    return written


def grids(client: MlflowClient, groups: list[Group], out: Path) -> list[tuple[Group, Entry, Path, int]]:
    """The final sample grid of every run, downloaded to `out/grids/`."""
    found = []
    for g in groups:
        for e in g.entries:
            got = final_grid(client, e.run.info.run_id, out / "grids" / f"{e.run.info.run_id[:8]}.png")
            if got:
                found.append((g, e, *got))
    return found


def log_report(client: MlflowClient, exp_id: str, out: Path, runs: list[Run]) -> str:
    """A new FINISHED run in the experiment holding the report under `report/`."""
    ids = ",".join(r.info.run_id for r in runs)
    tags = {tk.COMPARE_N_RUNS: str(len(runs)), tk.COMPARE_RUNS: ids if len(ids) < 5000 else ids[:4990] + ",..."}
    return mt.report_run(client, exp_id, "compare", out, f"compare-{time.strftime('%Y%m%d-%H%M%S')}", tags)


def compare(opts: dict) -> dict:
    """Write the report for `opts` (see USAGE); returns paths and the table as a dict (also report.json)."""
    register_resolvers()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per small file is noise
    root = opts["paths.root"] or os.environ.get("SYNTHMED_ROOT", ".")
    client = MlflowClient(mt.tracking_uri(opts["tracking_uri"], root))
    runs, skipped = select_runs(client, opts)
    if not runs:
        raise LookupError(f"no runs to compare (skipped: {'; '.join(skipped) or 'none'})")
    exp_name = opts["experiment"] or client.get_experiment(runs[0].info.experiment_id).name
    out = Path(opts["out"] or Path(root) / "reports" / f"compare-{exp_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    entries, repeats = drop_repeats([describe(client, r) for r in runs])
    skipped = skipped + repeats
    groups = group_entries(entries)
    columns = metric_columns(e for g in groups for e in g.entries)
    doc = R.Report(exp_name, client.tracking_uri, groups, columns, curves(client, groups, out),
                   grids(client, groups, out), skipped)
    atomic_write(out / "report.md", R.markdown(doc, out))
    atomic_write(out / "report.html", R.html(doc))
    atomic_write(out / "report.json", json.dumps(R.as_dict(doc), indent=2) + "\n")
    result = {"out": str(out), "markdown": str(out / "report.md"), "html": str(out / "report.html"),
              "table": R.as_dict(doc)["table"], "table_markdown": R.main_table(doc), "report_run_id": None}
    if truthy(opts["log"]):
        result["report_run_id"] = log_report(client, experiment_id(client, exp_name, root), out, runs)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\n\n" + (__doc__ or ""))
        return 0
    try:
        result = compare(parse(argv))
    except (LookupError, ValueError) as err:
        print(f"synthmed compare: {err}", file=sys.stderr)
        return 2
    print(result["table_markdown"])
    print(f"\nreport: {result['markdown']}\n        {result['html']}")
    if result["report_run_id"]:
        print(f"logged as MLflow run {result['report_run_id']} (artifacts report/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
