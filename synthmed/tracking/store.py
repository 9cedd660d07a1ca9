"""A local sqlite MLflow store that many jobs may open at the same moment.

MLflow creates and migrates a fresh sqlite file on first use, and Lightning's MLFlowLogger creates a missing
experiment with get-then-create: when a job array starts on a store that does not exist yet, several processes run
the migrations or create the experiment at once and all but one fail ("table ... already exists", "database is
locked", "Experiment ... already exists"). `prepare` does both once, under an exclusive lock on a file beside the
database (`mlflow.db.lock`), so the jobs after the first find a migrated store with its experiment. Servers
(`http://...`, PostgreSQL) handle concurrency themselves and are left alone.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def prepare(uri: str, experiment: str | None = None, artifact_location: str | None = None) -> None:
    """Migrates a local sqlite store and creates `experiment` in it, one process at a time."""
    db = sqlite_path(uri)
    if db is None:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        client = MlflowClient(uri)  # a fresh file is created and migrated here
        if experiment and client.get_experiment_by_name(experiment) is None:
            try:
                client.create_experiment(experiment, artifact_location=artifact_location)
            except MlflowException:  # created meanwhile by a process that does not take the lock
                if client.get_experiment_by_name(experiment) is None:
                    raise
