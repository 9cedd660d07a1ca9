"""Sweeps in MLflow: one parent run per Hydra multirun, each job a child run (`mlflow.parentRunId`).

A Hydra callback (conf/hydra/default.yaml) opens the parent before any job starts, which also creates and migrates
the tracking store once, before parallel launchers fan out. Jobs find the parent through an environment variable,
which launchers that start processes (joblib, submitit) pass on to their workers.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from typing import Any

from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking import ui

URI_ENV = "SYNTHMED_SWEEP_TRACKING_URI"


def experiment_id(client: MlflowClient, name: str, root: str) -> str:
    """The experiment's id, creating it (with artifacts under `root` for local stores) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=mt.artifact_location(client.tracking_uri, root))


class MLflowSweepCallback(Callback):
    """Opens the sweep's parent run and closes it FINISHED, or FAILED when a job failed or the sweep raised."""

    def __init__(self) -> None:
        self.client: MlflowClient | None = None
        self.parent: str | None = None
        self.ranking: tuple[str, str | None] = ("", None)  # (metric, direction) that picks the best child

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
        os.environ[mt.PARENT_ENV], os.environ[URI_ENV] = self.parent, uri
        # The sweeper raises on a failed job before on_multirun_end runs: close the parent at exit instead.
        atexit.register(self._close, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close("FINISHED")

    def _close(self, status: str) -> None:
        if self.client is None or self.parent is None:
            return
        children = self.client.search_runs(
            [self.client.get_run(self.parent).info.experiment_id],
            filter_string=f"tags.`{tk.PARENT_RUN}` = '{self.parent}'")
        if any(c.info.status != "FINISHED" for c in children):
            status = "FAILED"
        self.client.set_tag(self.parent, tk.SWEEP_CHILDREN, str(len(children)))
        ui.summarize_sweep(self.client, self.parent, children, *self.ranking)
        self.client.set_terminated(self.parent, status)
        os.environ.pop(mt.PARENT_ENV, None)
        self.parent = None


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
