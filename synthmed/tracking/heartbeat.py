"""Run heartbeats and the reaping of runs whose process died without a word (SIGKILL, out-of-memory kill, node loss).

A live run's rank 0 sets the tag `synthmed.heartbeat` (UTC, ISO 8601) every `every_s` seconds from a daemon thread,
so a long evaluation or a slow step does not look dead; a SIGKILLed process stops beating. `reap` marks RUNNING runs
whose last beat is older than a threshold KILLED (MLflow's own status for a run that was stopped) and tags when and
why. MLflow I/O only; the tag keys are in tracking/tags.py.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from synthmed.tracking import tags as tk

log = logging.getLogger(__name__)



def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


class _Beater(threading.Thread):
    def __init__(self, client: MlflowClient, run_id: str, every_s: float) -> None:
        super().__init__(name="synthmed-heartbeat", daemon=True)  # daemon: never keeps a finished process alive
        self.client, self.run_id, self.every_s = client, run_id, float(every_s)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            beat(self.client, self.run_id)


def beat(client: MlflowClient, run_id: str) -> None:
    """One heartbeat; a store that is briefly busy costs one beat, never the run."""
    try:
        client.set_tag(run_id, tk.HEARTBEAT, iso(utc_now()))
    except Exception as e:  # noqa: BLE001 - a missed beat is harmless; the reaper allows many
        log.warning("heartbeat of run %s not recorded: %s", run_id, e)


@contextmanager
def beating(client: MlflowClient, run_id: str, every_s: float, enabled: bool = True):
    """Beats every `every_s` seconds while the block runs (and once at entry); `enabled=False` on ranks > 0."""
    if not enabled:
        yield
        return
    if every_s <= 0:
        raise ValueError(f"heartbeat_s must be > 0 seconds, got {every_s}")
    for key, value in ((tk.HEARTBEAT_EVERY, f"{every_s:g}"), (tk.HOST, socket.gethostname()),
                       (tk.PID, str(os.getpid()))):
        client.set_tag(run_id, key, value)
    beat(client, run_id)
    thread = _Beater(client, run_id, every_s)
    thread.start()
    try:
        yield
    finally:
        thread.stop.set()
        thread.join(timeout=5)


@dataclass(frozen=True)
class RunBeat:
    """What `runs list` shows of one run."""

    run_id: str
    name: str
    experiment: str
    status: str
    started: datetime
    heartbeat: datetime | None

    def silence_s(self, now: datetime) -> float:
        """Seconds since the last sign of life: the last beat, or the start for a run that never beat."""
        return (now - (self.heartbeat or self.started)).total_seconds()


def run_beats(client: MlflowClient, status: str | None = None) -> list[RunBeat]:
    """Every run of every experiment (optionally only one status), newest first."""
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    query = f"attributes.status = '{status}'" if status else ""
    runs = client.search_runs(list(experiments), filter_string=query, order_by=["attributes.start_time DESC"])
    out = []
    for r in runs:
        tag = r.data.tags.get(tk.HEARTBEAT)
        out.append(RunBeat(r.info.run_id, r.info.run_name or "", experiments[r.info.experiment_id], r.info.status,
                           datetime.fromtimestamp(r.info.start_time / 1000, timezone.utc),
                           parse_iso(tag) if tag else None))
    return out


def reap(client: MlflowClient, older_than_s: float, now: datetime | None = None,
         dry_run: bool = False) -> list[RunBeat]:
    """Marks RUNNING runs silent for more than `older_than_s` seconds KILLED, with a `synthmed.reaped` tag.

    Returns:
        The runs reaped (or that would be, with `dry_run`).
    """
    if older_than_s <= 0:
        raise ValueError(f"--older-than must be > 0, got {older_than_s} s")
    now = now or utc_now()
    dead = [b for b in run_beats(client, "RUNNING") if b.silence_s(now) > older_than_s]
    for b in [] if dry_run else dead:
        last = iso(b.heartbeat) if b.heartbeat else f"never (started {iso(b.started)})"
        client.set_tag(b.run_id, tk.REAPED, f"{iso(now)}: no heartbeat for {b.silence_s(now):.0f} s (last: {last}; "
                                             f"threshold {older_than_s:.0f} s); marked KILLED by synthmed runs reap")
        end_ms = int((b.heartbeat or b.started).timestamp() * 1000)  # it died after its last sign of life
        client.set_terminated(b.run_id, RunStatus.to_string(RunStatus.KILLED), end_time=end_ms)
    return dead
