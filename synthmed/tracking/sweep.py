"""Sweeps in MLflow: one parent run per Hydra multirun, each job a child run (`mlflow.parentRunId`).

A Hydra callback (conf/hydra/default.yaml) opens the parent before any job starts, which also creates and migrates
the tracking store once, before parallel launchers fan out. Jobs find the parent through an environment variable,
which launchers that start processes (joblib, submitit) pass on to their workers.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from synthmed.io import atomic_write
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking import ui
from synthmed.tracking.lifecycle import HANDLED, Interrupted

URI_ENV = "SYNTHMED_SWEEP_TRACKING_URI"
FAILURE_FILE = "job_failure.json"  # a failed job's number, overrides and error, in its Hydra output folder
PROGRESS_EVERY_S = 10.0  # seconds between progress checks of a sweep whose jobs print elsewhere (submitit)


def experiment_id(client: MlflowClient, name: str, root: str) -> str:
    """The experiment's id, creating it (with artifacts under `root` for local stores) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=mt.artifact_location(client.tracking_uri, root))


def children_of(client: MlflowClient, parent: str) -> list[Run]:
    """The child runs of a sweep's parent run (one per job that got as far as creating its run)."""
    return client.search_runs([client.get_run(parent).info.experiment_id],
                              filter_string=f"tags.`{tk.PARENT_RUN}` = '{parent}'")


class MLflowSweepCallback(Callback):
    """Opens the sweep's parent run and closes it FINISHED; FAILED when a job failed or the sweep raised; KILLED
    when SIGINT/SIGTERM stopped it (in a job or between jobs). A sweep that did not finish prints, and logs as
    `sweep/failures.md`, which jobs failed and why. Launchers whose jobs print elsewhere (submitit) get a progress
    line whenever the count of running/finished/failed jobs changes."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.parent: str | None = None
        self.ranking: tuple[str, str | None] = ("", None)  # (metric, direction) that picks the best child
        self.sweep_dir: Path | None = None
        self.signum: int | None = None  # a signal received outside a job's own handling
        self._previous: dict[int, Any] = {}
        self._progress: SweepProgress | None = None

    def __getstate__(self) -> dict:
        """Launchers that pickle the job's context (submitit) pickle this callback too: the progress thread and
        the saved signal handlers stay with the sweep's own process (a job needs neither)."""
        return self.__dict__ | {"_progress": None, "_previous": {}}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            uri = mt.check_store(config)  # before any job: sqlite on a shared mount, or a server that is down
        except (ValueError, ConnectionError) as err:
            # Hydra turns a callback's exception into a warning and goes on: stop the multirun itself.
            print(f"synthmed train: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from err
        self.client = MlflowClient(uri)
        exp = experiment_id(self.client, str(config.experiment_name), str(config.paths.root))
        overrides = " ".join(config.hydra.overrides.task)
        run = self.client.create_run(exp, run_name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
                                     tags={tk.SWEEP: "parent", tk.SWEEP_OVERRIDES: overrides})
        self.parent = run.info.run_id
        self.ranking = sweep_metric(config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        os.environ[mt.PARENT_ENV], os.environ[URI_ENV] = self.parent, uri
        # The sweeper raises on a failed job before on_multirun_end runs: close the parent at exit instead.
        atexit.register(self._close, "FAILED")
        self._catch_signals()
        if prints_elsewhere(config):
            self._progress = SweepProgress(self.client, self.parent, self.sweep_dir)
            self._progress.start()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """In the job's own process (whatever the launcher): a failed job leaves its overrides and error next to
        its outputs, where the sweep's summary finds them (also when it failed before creating a run)."""
        if job_return.status != JobStatus.FAILED or not os.environ.get(mt.PARENT_ENV):
            return
        exc = job_return._return_value  # `return_value` would re-raise it
        record = {"job": config.hydra.job.get("num"), "overrides": list(job_return.overrides or []),
                  "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
        atomic_write(Path(str(config.hydra.runtime.output_dir)) / FAILURE_FILE, json.dumps(record))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close("FINISHED")

    def _catch_signals(self) -> None:
        """SIGINT/SIGTERM between jobs (a job's run handles its own, tracking/lifecycle.py) end the sweep with the
        shell's 128 + signal status, and the parent KILLED (SIGTERM's default would leave it RUNNING)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in HANDLED:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        self.signum = self.signum or signum
        raise Interrupted(signum)

    def _close(self, status: str) -> None:
        if self.client is None or self.parent is None:
            return
        if self._progress is not None:
            self._progress.stop()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        children = children_of(self.client, self.parent)
        failures = job_failures(self.sweep_dir)
        if self.signum is not None or any(c.info.status == "KILLED" for c in children):
            status = "KILLED"
        elif failures or any(c.info.status != "FINISHED" for c in children):
            status = "FAILED"
        self.client.set_tag(self.parent, tk.SWEEP_CHILDREN, str(len(children)))
        ui.summarize_sweep(self.client, self.parent, children, *self.ranking)
        if status != "FINISHED":
            report = failure_report(self.parent, status, children, failures, self.sweep_dir, self.signum)
            mt.log_text(self.client, self.parent, report, "sweep/failures.md")
            print(report, file=sys.stderr, flush=True)
        self.client.set_terminated(self.parent, status)
        os.environ.pop(mt.PARENT_ENV, None)
        self.parent = None


def job_failures(sweep_dir: Path | None) -> list[dict]:
    """The records failed jobs left in their output folders (`FAILURE_FILE`), by job number."""
    if sweep_dir is None or not sweep_dir.is_dir():
        return []
    found = [json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{FAILURE_FILE}")]
    return sorted(found, key=lambda r: (r.get("job") is None, r.get("job") or 0))


def child_overrides(run: Run) -> set[str]:
    """The `key=value` overrides a child run was started with (its `override.*` params)."""
    return {f"{k[len('override.'):]}={v}" for k, v in run.data.params.items() if k.startswith("override.")}


def failure_report(parent: str, status: str, children: list[Run], failures: list[dict], sweep_dir: Path | None,
                   signum: int | None) -> str:
    """Markdown-ish lines: which jobs failed or were stopped, with their overrides, run and reason."""
    stopped = [c for c in children if c.info.status not in ("FINISHED", "RUNNING")]
    lines = [f"synthmed sweep ended {status}: {len(failures)} job(s) failed, "
             f"{sum(c.info.status == 'KILLED' for c in children)} stopped, "
             f"{sum(c.info.status == 'FINISHED' for c in children)} finished (parent run {parent})"]
    if signum is not None:
        lines.append(f"- stopped by {signal.Signals(signum).name} between jobs")
    shared = _shared([set(f["overrides"]) for f in failures] + [child_overrides(c) for c in children])
    matched = set()
    for f in failures:
        run = next((c for c in stopped if child_overrides(c) == set(f["overrides"])), None)
        matched |= {run.info.run_id} if run else set()
        where = f"run {run.info.run_id} {run.info.run_name}" if run else "no run created"
        lines.append(f"- job {f['job']} [{' '.join(o for o in f['overrides'] if o not in shared)}] ({where}): "
                     f"{f['error']}")
    for c in stopped:
        if c.info.run_id not in matched:
            why = c.data.tags.get(tk.ERROR, "no error recorded")
            own = " ".join(sorted(child_overrides(c) - shared))
            lines.append(f"- run {c.info.run_id} {c.info.run_name} [{own}] {c.info.status}: {why}")
    lines.append(f"Job logs: {sweep_dir}/<job>/; a failed run's traceback: its artifact error/traceback.txt"
                 if sweep_dir else "A failed run's traceback: its artifact error/traceback.txt")
    return "\n".join(lines)


def _shared(jobs: list[set[str]]) -> set[str]:
    """Overrides every known job has (`debug=smoke`, `paths.root=...`): left out of the summary lines, which then
    show what tells the jobs apart. Nothing is shared when only one job is known."""
    return set.intersection(*jobs) if len(jobs) > 1 else set()


def prints_elsewhere(config: DictConfig) -> bool:
    """Whether the launcher sends job output to files (submitit: `<sweep dir>/.submitit/`), not this terminal."""
    launcher = config.hydra.get("launcher") or {}
    return "submitit" in str(launcher.get("_target_", ""))


class SweepProgress(threading.Thread):
    """Prints `synthmed sweep: 2 running, 1 finished, 0 failed` to stderr whenever the counts of the parent's
    child runs change, from the process that waits on the jobs (a daemon thread: never holds the exit)."""

    def __init__(self, client: MlflowClient, parent: str, sweep_dir: Path | None,
                 every_s: float = PROGRESS_EVERY_S) -> None:
        super().__init__(name="synthmed-sweep-progress", daemon=True)
        self.client, self.parent, self.sweep_dir, self.every_s = client, parent, sweep_dir, every_s
        self._stop_event, self._last = threading.Event(), ""

    def line(self) -> str:
        counts = Counter(c.info.status for c in children_of(self.client, self.parent))
        return (f"synthmed sweep: {counts['RUNNING']} running, {counts['FINISHED']} finished, "
                f"{counts['FAILED'] + counts['KILLED']} failed or stopped (MLflow parent run {self.parent})")

    def run(self) -> None:
        print(f"synthmed sweep: jobs submitted; their output goes to {self.sweep_dir}/.submitit/<job id>/ "
              f"(progress every {self.every_s:g} s)", file=sys.stderr, flush=True)
        while not self._stop_event.wait(self.every_s):
            try:
                line = self.line()
            except Exception:  # a busy store: try again at the next tick
                continue
            if line != self._last:
                print(line, file=sys.stderr, flush=True)
                self._last = line

    def stop(self) -> None:
        self._stop_event.set()


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (`synthmed train -m ...`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_metric(config: DictConfig) -> tuple[str, str | None]:
    """The metric a sweep's best child is chosen by: a search's objective, else FID when the Inception weights
    exist, else the in-domain Frechet distance; with its direction (a target metric: its distance to real)."""
    from synthmed.metrics import names
    from synthmed.metrics.directions import objective_key, search_direction
    from synthmed.metrics.inception import resolve_weights

    key = config.get("optimized_metric")
    if not key:
        try:
            resolve_weights(config.metrics.get("fid_weights"))
            key = names.FID
        except FileNotFoundError:
            key = names.FD_DOMAIN
    return objective_key(str(key)), search_direction(str(key))




def job_overrides() -> dict[str, str]:
    """This job's command-line overrides (`model=gan seed=1` -> {"model": "gan", "seed": "1"})."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = HydraConfig.get().overrides.task
    except ValueError:  # not inside a Hydra app (tests compose configs directly)
        return {}
    return dict(o.split("=", 1) for o in task if "=" in o)
