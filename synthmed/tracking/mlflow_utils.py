"""MLflow helpers: store location, run naming, tags, the run record (config, environment) and run look-up.

The layout is DESIGN.md's "MLflow layout": experiment = dataset name by default, run name
`<model>-<dataset>-<hash8>`, params = flattened resolved config, tags `synthmed.*`, artifacts `config/`, `samples/`,
`checkpoints/`, `metrics/`, `env/`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

import synthmed
from synthmed.config import instantiate
from synthmed.tracking import store
from synthmed.tracking import tags as tk

if TYPE_CHECKING:  # Lightning costs ~3 s to import: compare, reproduce --pin/--dry-run and records never need it
    from pytorch_lightning.loggers import MLFlowLogger

ENV_URI = "MLFLOW_TRACKING_URI"
PARENT_ENV = "SYNTHMED_PARENT_RUN_ID"  # set by the sweep callback (sweep.py); launchers pass it on to their jobs


def tracking_uri(configured: str | None, root: str | Path) -> str:
    """An explicit config value wins, then `MLFLOW_TRACKING_URI`, then `sqlite:///<root>/mlflow.db`."""
    if configured:
        return str(configured)
    return os.environ.get(ENV_URI) or f"sqlite:///{Path(root).resolve()}/mlflow.db"


def store_exists(uri: str) -> bool:
    """False only for a sqlite store whose file is missing: opening it would create an empty `mlflow.db`."""
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def is_local_store(uri: str) -> bool:
    """True for stores on this machine, whose artifacts we place under `paths.root` too."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def artifact_location(uri: str, root: str | Path) -> str | None:
    """`<root>/mlartifacts` for local stores; a server decides for itself."""
    return (Path(root).resolve() / "mlartifacts").as_uri() if is_local_store(uri) else None


def run_name(model: str, dataset: str, full_hash: str) -> str:
    return f"{model}-{dataset}-{full_hash[:8]}"


@functools.cache
def git_sha() -> str:
    """HEAD of the checkout synthmed runs from (+ `-dirty` when it has uncommitted changes), or `unknown`."""
    repo = Path(synthmed.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def run_tags(full_hash: str, family: str, model: str, fingerprint: str) -> dict[str, str]:
    return {tk.CONFIG_HASH: full_hash, tk.MODEL_FAMILY: family, tk.MODEL: model, tk.DATASET_FINGERPRINT: fingerprint,
            tk.GIT_SHA: git_sha(), tk.VERSION: synthmed.__version__}


def flatten(node: Any, prefix: str = "") -> dict[str, str]:
    """`{"model": {"lr": 1}}` -> `{"model.lr": "1"}`; lists stay one value (MLflow params are strings)."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(node) if isinstance(node, (list, tuple)) else str(node)}


def resolved_container(cfg: DictConfig) -> dict:
    """The resolved config without Hydra's own node, as plain containers."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def requirements() -> str:
    """`name==version` of every installed distribution, sorted: the environment a result came from."""
    dists = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions() if d.metadata["Name"]}
    return "".join(f"{name}=={version}\n" for name, version in sorted(dists.items()))


def log_text(client: MlflowClient, run_id: str, text: str, artifact_file: str) -> None:
    """Write `text` as the artifact `artifact_file` (e.g. `config/config.yaml`)."""
    folder, name = os.path.split(artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / name
        local.write_text(text)
        client.log_artifact(run_id, str(local), folder or None)


def log_json(client: MlflowClient, run_id: str, obj: Any, artifact_file: str) -> None:
    log_text(client, run_id, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", artifact_file)


def log_run_record(client: MlflowClient, run_id: str, cfg: DictConfig) -> None:
    """The resolved config and the package versions: what `synthmed reproduce` needs."""
    log_text(client, run_id, OmegaConf.to_yaml(OmegaConf.create(resolved_container(cfg))), "config/config.yaml")
    log_text(client, run_id, requirements(), "env/requirements.txt")


def find_run(client: MlflowClient, ref: str, prefer_finished: bool = True) -> Run:
    """A run by its id, or the newest training run whose config hash starts with `ref` (>= 6 hex digits).

    Evaluation child runs carry their trained run's hash too (so that they group with it) but hold no checkpoint or
    config: a hash never resolves to them. `prefer_finished`: among runs of one hash, a FINISHED one wins over newer
    failed or killed ones.
    """
    try:
        return client.get_run(ref)
    except Exception:  # MlflowException for an unknown id; fall through to the hash search
        pass
    if len(ref) < 6 or any(c not in "0123456789abcdef" for c in ref.lower()):
        raise ValueError(f"'{ref}' is neither a run id nor a config hash prefix of at least 6 hex digits")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{tk.CONFIG_HASH}` LIKE '{ref.lower()}%'",
                              order_by=["attributes.start_time DESC"])
    runs = [r for r in runs if tk.EVALUATES not in r.data.tags]
    if not runs:
        raise LookupError(f"no run with id or config hash '{ref}' in {client.tracking_uri}")
    hashes = {r.data.tags[tk.CONFIG_HASH] for r in runs}
    if len(hashes) > 1:  # a prefix of several configs: which one the user meant is not ours to guess
        listing = "\n".join(f"  {r.data.tags[tk.CONFIG_HASH][:12]}  run {r.info.run_id}  {r.info.status:<8}  "
                            f"{r.info.run_name}" for r in runs)
        raise LookupError(f"config hash prefix '{ref}' matches {len(hashes)} configurations:\n{listing}\n"
                          f"give a longer prefix (or a run id)")
    finished = [r for r in runs if r.info.status == "FINISHED"] if prefer_finished else []
    chosen = (finished or runs)[0]
    if len(runs) > 1:
        logging.getLogger(__name__).info(
            "config hash %s: %d runs; took %s (%s, the newest%s)", chosen.data.tags[tk.CONFIG_HASH][:12], len(runs),
            chosen.info.run_id, chosen.info.status, " finished one" if finished else "")
    return chosen


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """Set several tags of a run (values as strings), in one request."""
    if tags:
        client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def child_run(client: MlflowClient, parent: Run, run_name: str, tags: dict[str, str] | None = None) -> RunRef:
    """A new run in the parent's experiment, linked to it (`mlflow.parentRunId`) so the UI nests it."""
    tags = {**(tags or {}), tk.PARENT_RUN: parent.info.run_id}
    run = client.create_run(parent.info.experiment_id, run_name=run_name, tags=tags)
    return RunRef(client, run.info.run_id)


def report_run(client: MlflowClient, experiment_id: str, kind: str, folder: str | Path, run_name: str,
               tags: dict[str, str] | None = None, parent: Run | None = None,
               metrics: dict[str, float | None] | None = None, params: dict[str, str] | None = None,
               artifact_path: str = "report") -> str:
    """A run tagged `synthmed.report=<kind>` holding `folder` under `artifact_path` (the JSON, Markdown and HTML of
    a compare, utility, bias or reader-study report), with `metrics` (None values skipped) and `params`.

    With `parent` (the run it judges) it is a child run carrying what the parent is (family, model, data) but never
    its config hash, so a hash never resolves to a report. Ends FINISHED, or FAILED if logging fails. Returns its id.
    """
    tags = {**(tags or {}), tk.REPORT: kind}
    if parent is not None:
        identity = (tk.MODEL_FAMILY, tk.MODEL, tk.DATASET_FINGERPRINT)
        tags = {k: parent.data.tags[k] for k in identity if k in parent.data.tags} | tags
        run_id = child_run(client, parent, run_name, tags).run_id
    else:
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    with run_status(client, run_id):
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()
                                          if v is not None],
                         params=[Param(k, str(v)) for k, v in (params or {}).items()])
        client.log_artifacts(run_id, str(folder), artifact_path)
    return run_id


@dataclass(frozen=True)
class RunRef:
    """The MLflow run a trainer logs to."""

    client: MlflowClient
    run_id: str


def log_file(run: RunRef, path: str | Path, folder: str | None = None) -> None:
    """Upload one local file as an artifact of the run (under `folder`)."""
    run.client.log_artifact(run.run_id, str(path), folder)


def mlflow_run(trainer) -> RunRef | None:
    """The trainer's MLflow run, or None when it has no MLFlowLogger (e.g. a bare test trainer)."""
    from pytorch_lightning.loggers import MLFlowLogger

    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            return RunRef(logger.experiment, logger.run_id)
    return None


def parent_tags() -> dict[str, str]:
    """Tags that make the current job a child of the running sweep (empty outside a sweep)."""
    parent = os.environ.get(PARENT_ENV)
    return {tk.PARENT_RUN: parent} if parent else {}


def tracking_client(cfg: DictConfig) -> MlflowClient:
    """A client of the store this config logs to."""
    return MlflowClient(tracking_uri(cfg.logger.get("tracking_uri"), cfg.paths.root))


def lightning_logger_config(node: DictConfig) -> DictConfig:
    """The `logger` config without synthmed's own keys (`system_metrics*`, read by train.py;
    `allow_network_sqlite`, read by `check_store`), i.e. only MLFlowLogger's arguments; resolved here, since a
    detached copy cannot resolve interpolations later."""
    resolved = OmegaConf.to_container(node, resolve=True)
    own = lambda k: str(k).startswith("system_") or k == "allow_network_sqlite"
    return OmegaConf.create({k: v for k, v in resolved.items() if not own(k)})


def check_store(cfg: DictConfig) -> str:
    """The config's tracking URI, checked before any work (network sqlite refused, a server must answer)."""
    uri = tracking_uri(cfg.logger.get("tracking_uri"), cfg.paths.root)
    store.check(uri, bool(cfg.logger.get("allow_network_sqlite", False)))
    return uri


def make_logger(cfg: DictConfig, family: str, fingerprint: str, full_hash: str,
                run_id: str | None = None) -> MLFlowLogger:
    """The run's MLFlowLogger with its name, tags and (local stores) artifact folder under `paths.root`.

    With `run_id` it continues that run (resume) instead of creating one.
    """
    uri = tracking_uri(cfg.logger.get("tracking_uri"), cfg.paths.root)
    store.prepare(uri, cfg.logger.get("experiment_name"), artifact_location(uri, cfg.paths.root))  # job arrays
    logger = instantiate(
        lightning_logger_config(cfg.logger), "logger", tracking_uri=uri, artifact_location=artifact_location(uri, cfg.paths.root),
        run_name=run_name(cfg.model.name, cfg.dataset.name, full_hash),
        tags={**run_tags(full_hash, family, cfg.model.name, fingerprint), **parent_tags()}, run_id=run_id,
    )
    return open_run(logger)


def open_run(logger: MLFlowLogger) -> MLFlowLogger:
    """Create (or re-open) the logger's run now, leaving `MLFLOW_TRACKING_URI` as it was.

    Lightning calls mlflow.set_tracking_uri(), which exports MLFLOW_TRACKING_URI: the next run in this process
    (a sweep job, a notebook cell, the next test) would take that for the user's choice and log into this store.
    """
    saved = os.environ.get(ENV_URI)
    logger.experiment  # noqa: B018 - creates (or re-opens) the run now
    if saved is None:
        os.environ.pop(ENV_URI, None)
    else:
        os.environ[ENV_URI] = saved
    return logger


def _killed(exc: BaseException) -> bool:
    """Ctrl-C, or SIGTERM (Lightning turns it into SIGTERMException at the next batch boundary; outside `fit`
    tracking/lifecycle.py raises Interrupted)."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from synthmed.tracking.lifecycle import Interrupted

    return isinstance(exc, (KeyboardInterrupt, SIGTERMException, Interrupted))


@contextmanager
def run_status(client: MlflowClient, run_id: str):
    """End the run FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED with its traceback as `error/traceback.txt`."""
    try:
        yield
    except BaseException as exc:
        status = "KILLED" if _killed(exc) else "FAILED"
        if status == "FAILED":
            log_text(client, run_id, traceback.format_exc(), "error/traceback.txt")
        # The job's log (Hydra's train.log) says how and why the run ended, next to its id.
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        logging.getLogger(__name__).error("run %s ended %s (%s)", run_id, status, why, exc_info=status == "FAILED")
        client.set_tag(run_id, tk.ERROR, why[:500])
        client.set_terminated(run_id, status)
        raise
    client.set_terminated(run_id, "FINISHED")
