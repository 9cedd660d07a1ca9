"""`synthmed reproduce <config hash>`: re-run a recorded config and check that its metrics come out the same.

find the record (MLflow, then pinned studies) -> check its hash -> move its locations to the current root ->
compare the environment -> train -> compare metrics. Exit status: 0 when every recorded metric is reproduced within
the relative tolerance, 1 when one is not (or the run fails), 2 when the record cannot be re-run as recorded.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from synthmed.config import CONF_DIR, register_resolvers
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import records
from synthmed.tracking import tags as tk
from synthmed.tracking.confighash import config_hash, short_hash
from synthmed.tracking.runinfo import final_metrics


class Refused(Exception):
    """The record cannot be re-run as recorded (hash mismatch, missing hardware, semantic override)."""


class TrainingFailed(Exception):
    """The re-run raised; its MLflow run is FAILED (and tagged as a reproduction)."""


@dataclass
class Outcome:
    """What `reproduce` found: the record, the new run and one (key, recorded, reproduced, rel. diff, ok) per metric."""

    record: records.RecordedResult
    run_id: str | None = None
    rows: list[tuple[str, float, float | None, float | None, bool]] = field(default_factory=list)
    env: list[tuple[str, str, str]] = field(default_factory=list)
    passed: bool = False


def find_record(client: MlflowClient | None, ref: str, study_roots: list[Path]) -> records.RecordedResult:
    """The MLflow run with id/hash `ref`, else the pinned-study entry with that hash (`client` None: no store)."""
    if client is None:
        return records.from_studies(ref, study_roots)
    try:
        return records.from_mlflow(client, ref)
    except LookupError as mlflow_err:
        try:
            return records.from_studies(ref, study_roots)
        except LookupError as study_err:
            raise LookupError(f"{mlflow_err}; {study_err}") from None


def _rebase(value, moves: list[tuple[str, str]]):
    """A string leaf under a recorded location moved to the new one; anything else unchanged."""
    if isinstance(value, dict):
        return {k: _rebase(v, moves) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, moves) for v in value]
    if isinstance(value, str):
        for old, new in moves:
            if value == old or value.startswith(old.rstrip("/") + "/"):
                return new + value[len(old.rstrip("/")):]
    return value


def relocate(cfg: DictConfig, root: Path, uri: str) -> DictConfig:
    """The recorded config with its output/cache folders (and leaves under them) moved under `root`."""
    data = OmegaConf.to_container(cfg, resolve=False)
    old = data.get("paths") or {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    new = {"root": str(root), "output_dir": str(root / "outputs" / "reproduce" / f"{stamp}-{os.getpid()}"),
           "cache_dir": str(root / ".cache" / "synthmed")}
    for key, value in old.items():  # other folders of a custom paths group keep their place under the root
        if key not in new and isinstance(value, str) and value.startswith(str(old.get("root", "\0")) + "/"):
            new[key] = str(root / Path(value).relative_to(old["root"]))
    moves = sorted(((old[k], new[k]) for k in new if k != "root" and isinstance(old.get(k), str) and old[k]),
                   key=lambda m: -len(m[0]))  # longest first: nested folders before their parents
    data = _rebase({k: v for k, v in data.items() if k != "paths"}, moves)
    data["paths"] = {**old, **new}
    if data.get("resume") is not None:  # a reproduction trains from scratch, even of a run that was resumed
        data["resume"] = None
    data.setdefault("logger", {})["tracking_uri"] = uri  # the store the record was found in (or the current one)
    return OmegaConf.create(data)


def check(record: records.RecordedResult, cfg: DictConfig) -> None:
    """Refuse before training when the run would not be the recorded configuration."""
    recorded = config_hash(record.cfg)
    if record.config_hash and recorded != record.config_hash:
        raise Refused(f"the recorded config of {record.source} hashes to {short_hash(recorded)}, not to its "
                      f"recorded hash {short_hash(record.config_hash)}: the config-hash rules or the record changed "
                      "since it was made; refusing to run something else than what was recorded")
    if config_hash(cfg) != recorded:
        raise Refused(f"the overrides change the config hash ({short_hash(recorded)} -> "
                      f"{short_hash(config_hash(cfg))}): only non-semantic keys (paths, logging, workers) may change")
    accelerator = str(OmegaConf.select(cfg, "hardware.accelerator", default="cpu"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise Refused(f"the record ran on hardware.accelerator={accelerator}, and no CUDA device is visible; "
                          "the device count and precision are part of the result, so it is not re-run on the CPU")


def compare_metrics(recorded: dict[str, float], reproduced: dict[str, float], tolerance: float):
    """One row per recorded metric: (key, recorded, reproduced, relative difference, within tolerance)."""
    rows = []
    for key, a in recorded.items():
        b = reproduced.get(key)
        if b is None:
            rows.append((key, a, None, None, False))
            continue
        same = a == b or (math.isnan(a) and math.isnan(b))
        rel = 0.0 if same else abs(a - b) / max(abs(a), abs(b))
        rows.append((key, a, b, rel, rel <= tolerance))
    return rows


def new_run(client: MlflowClient, cfg: DictConfig, full_hash: str, since_ms: int, original: str | None):
    """The run `train()` just created: same hash, started after `since_ms`, not the original."""
    exp = client.get_experiment_by_name(str(cfg.experiment_name))
    runs = client.search_runs([exp.experiment_id], f"tags.`{tk.CONFIG_HASH}` = '{full_hash}' and "
                              f"attributes.start_time >= {since_ms}", order_by=["attributes.start_time DESC"])
    return next((r for r in runs if r.info.run_id != original), None)


def reproduce(ref: str, root: Path, tolerance: float = 1e-6, uri: str | None = None, overrides: list[str] = (),
              study_roots: list[Path] | None = None, dry_run: bool = False) -> Outcome:
    """Find, check, re-run and compare (see the module docstring); raises Refused when it cannot re-run."""
    from synthmed.train import train  # late: pulls in Lightning and the models

    register_resolvers()
    root = Path(root).resolve()
    uri = mt.tracking_uri(uri, root)
    # A dry run only looks: with no store yet it reads the pinned studies and creates no mlflow.db.
    client = MlflowClient(uri) if mt.store_exists(uri) or not dry_run else None
    record = find_record(client, ref, study_roots or default_study_roots(root))
    cfg = relocate(record.cfg, root, uri)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides))) if overrides else cfg
    check(record, cfg)
    outcome = Outcome(record, env=records.env_diff(record.requirements, mt.requirements()))
    print_header(outcome, cfg)
    if dry_run:
        return outcome
    since = int(time.time() * 1000) - 1
    try:
        train(cfg)
    except Exception as err:
        raise TrainingFailed(f"the re-run of {short_hash(record.config_hash)} failed: {err!r}") from err
    finally:  # a failed reproduction is still marked as one
        run = new_run(client, cfg, record.config_hash, since, record.run_id)
        if run is not None:
            outcome.run_id = run.info.run_id
            mt.set_tags(client, run.info.run_id,
                        {tk.REPRODUCES: record.run_id or f"{record.source}#{record.config_hash}"})
    if outcome.run_id is None:
        raise TrainingFailed(f"the re-run finished, but no new run of {short_hash(record.config_hash)} is in "
                             f"{client.tracking_uri}")
    judge(client, outcome, tolerance)
    return outcome


def judge(client: MlflowClient, outcome: Outcome, tolerance: float) -> None:
    """Compare the new run's metrics with the record's; tag the verdict and log it as reproduce/verdict.json."""
    rec = outcome.record
    outcome.rows = compare_metrics(rec.metrics, final_metrics(client, client.get_run(outcome.run_id), True), tolerance)
    outcome.passed = bool(outcome.rows) and all(row[4] for row in outcome.rows)
    mt.set_tags(client, outcome.run_id, {tk.REPRODUCE_VERDICT: "pass" if outcome.passed else "fail"})
    mt.log_json(client, outcome.run_id, {"tolerance": tolerance, "source": rec.source, "passed": outcome.passed,
                                         "metrics": outcome.rows, "env_diff": outcome.env,
                                         "git_sha": {"recorded": rec.git_sha, "current": mt.git_sha()}},
                "reproduce/verdict.json")


def default_study_roots(root: Path) -> list[Path]:
    """`experiments/` of the synthmed checkout and of `paths.root`."""
    return list(dict.fromkeys([CONF_DIR.parent / "experiments", Path(root) / "experiments"]))


def print_header(outcome: Outcome, cfg: DictConfig) -> None:
    rec = outcome.record
    lines = [f"reproducing config {short_hash(rec.config_hash)} from {rec.source}",
             f"  hash check:   ok (the recorded config hashes to {short_hash(config_hash(cfg))})",
             f"  git sha:      recorded {rec.git_sha or 'unknown'}, current {mt.git_sha()}"
             + ("" if rec.git_sha == mt.git_sha() else "  (differs)")]
    if rec.requirements is None:
        lines.append("  environment:  no recorded requirements to compare")
    elif not outcome.env:
        lines.append("  environment:  same package versions as recorded")
    else:
        lines.append(f"  environment:  {len(outcome.env)} package(s) differ:")
        lines += [f"    {'package':<32} {'recorded':<20} current"]
        lines += [f"    {name:<32} {a:<20} {b}" for name, a, b in outcome.env]
    print("\n".join(lines), flush=True)


def print_verdict(outcome: Outcome, tolerance: float) -> None:
    lines = ["", f"{'metric':<32} {'recorded':>20} {'reproduced':>20} {'rel. diff':>10}"]
    for key, a, b, rel, ok in outcome.rows:
        got = "missing" if b is None else f"{b:.12g}"
        diff = "-" if rel is None else f"{rel:.2e}"
        lines.append(f"{key:<32} {a:>20.12g} {got:>20} {diff:>10}  {'ok' if ok else 'FAIL'}")
    verdict = "PASS" if outcome.passed else "FAIL"
    lines.append(f"\n{verdict}: {sum(r[4] for r in outcome.rows)}/{len(outcome.rows)} metrics within a relative "
                 f"tolerance of {tolerance:g}; new run {outcome.run_id} ({tk.REPRODUCES}="
                 f"{outcome.record.run_id or outcome.record.source})")
    print("\n".join(lines), flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthmed reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", help="config hash (>= 6 hex digits) or MLflow run id")
    p.add_argument("overrides", nargs="*", help="paths.root=DIR, tracking_uri=URI, or non-semantic key=value")
    p.add_argument("--tolerance", type=float, default=1e-6, help="max relative difference per metric (1e-6)")
    p.add_argument("--experiments", action="append", type=Path, default=None,
                   help="folder of pinned studies with <slug>/runs.json (default: experiments/ of the checkout "
                        "and of paths.root; repeatable)")
    p.add_argument("--dry-run", action="store_true", help="find, check the hash and the environment; do not train")
    p.add_argument("--pin", type=Path, metavar="STUDY_DIR",
                   help="instead of re-running, write the record into STUDY_DIR/runs.json (a pinned study)")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per small file is noise
    args = parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    opts = dict(o.split("=", 1) for o in args.overrides if "=" in o)
    if len(opts) != len(args.overrides):
        print(f"synthmed reproduce: overrides must be key=value, got {args.overrides}", file=sys.stderr)
        return 2
    root = Path(opts.pop("paths.root", os.environ.get("SYNTHMED_ROOT", ".")))
    uri = opts.pop("tracking_uri", None)
    try:
        if args.pin:
            register_resolvers()
            record = records.from_mlflow(MlflowClient(mt.tracking_uri(uri, root)), args.ref)
            print(f"pinned {short_hash(record.config_hash)} in {records.pin(record, args.pin)}")
            return 0
        outcome = reproduce(args.ref, root, args.tolerance, uri, [f"{k}={v}" for k, v in opts.items()],
                            args.experiments, args.dry_run)
    except TrainingFailed:
        traceback.print_exc()
        return 1
    except (Refused, LookupError, ValueError, FileNotFoundError) as err:
        print(f"synthmed reproduce: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    print_verdict(outcome, args.tolerance)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
