"""`synthmed runs list|reap`: status, age and heartbeat of runs; close runs whose process was SIGKILLed.

    synthmed runs list [--status RUNNING] [--root DIR] [--tracking-uri URI]
    synthmed runs reap [--older-than 10m] [--dry-run] [--root DIR] [--tracking-uri URI]

A reaped run ends KILLED with a `synthmed.reaped` tag; `synthmed train resume=<run id>` continues it from its newest
checkpoint like any killed run. The store is `--tracking-uri`, else $MLFLOW_TRACKING_URI, else <root>/mlflow.db.
"""

from __future__ import annotations

import argparse
import re
import sys

from mlflow.tracking import MlflowClient

from synthmed.tracking import heartbeat as hb
from synthmed.tracking.mlflow_utils import tracking_uri

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: str) -> float:
    """'90s', '10m', '2h', '1d' or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 10m, 2h or 1d, got '{text}'")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def age(seconds: float) -> str:
    """Compact human age: 45s, 12m, 3h05m, 2d04h."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(beats: list[hb.RunBeat]) -> str:
    now = hb.utc_now()
    rows = [("run id", "status", "age", "heartbeat", "experiment", "name")]
    for b in beats:
        beat = f"{age((now - b.heartbeat).total_seconds())} ago" if b.heartbeat else "-"
        rows.append((b.run_id, b.status, age((now - b.started).total_seconds()), beat, b.experiment, b.name))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthmed runs", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("list", "reap"))
    p.add_argument("--root", default=".", help="paths.root of the runs (default: current directory)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store; default $MLFLOW_TRACKING_URI or ROOT/mlflow.db")
    p.add_argument("--status", default=None, help="list only: RUNNING, FINISHED, FAILED or KILLED")
    p.add_argument("--older-than", type=duration_s, default=600.0, help="reap: heartbeat silence (default 10m)")
    p.add_argument("--dry-run", action="store_true", help="reap: only show what would be reaped")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    client = MlflowClient(tracking_uri(args.tracking_uri, args.root))
    if args.action == "list":
        print(table(hb.run_beats(client, args.status)))
        return 0
    dead = hb.reap(client, args.older_than, dry_run=args.dry_run)
    verb = "would reap" if args.dry_run else "reaped"
    print(f"{verb} {len(dead)} run(s) silent for more than {age(args.older_than)}"
          + "".join(f"\n  {b.run_id}  {b.name}" for b in dead))
    if dead and not args.dry_run:
        print("continue one with: synthmed train <its overrides> resume=<run id>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
