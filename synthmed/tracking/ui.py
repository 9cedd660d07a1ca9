"""What makes the MLflow UI the place to compare runs: image charts, the Dataset column, source, descriptions,
system metrics, and a sweep parent's summary. MLflow I/O only; callers pass plain values.

- Grids go through `MlflowClient.log_image(key=..., step=...)`: the Chart view then shows every run's samples side
  by side with a step slider (the plain `samples/step_*.png` artifacts stay for `synthmed compare`). MLflow 3 opens
  an image chart at step 0 and lists every param under each run: the descriptions say where the step is set.
- The data set goes through `log_inputs` (the Dataset column): its name, its fingerprint as the digest, its format;
  never a path under the data root.
- Standard tags: `mlflow.source.name` / `.type` / `.git.commit` (Source column) and `mlflow.note.content`
  (the run's and the experiment's description).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils import mlflow_tags as T

from synthmed.tracking import tags as tk
from synthmed.tracking.mlflow_utils import git_sha, log_text, set_tags

log = logging.getLogger(__name__)

GRID_KEY = "samples"  # image-chart key: one chart, every run's grid at each step
DATASET_ATTEMPTS = 4  # log_inputs tries: a sweep's jobs race to create the same data set row (_lost_dataset_race)
DIGEST_CHARS = 32  # MLflow stores a dataset digest in at most 36 characters: a 128-bit prefix of the fingerprint


def source_tags(entry_point: str, commit: str) -> dict[str, str]:
    """MLflow's standard source tags: the Source column shows `entry_point`, the run page the git commit."""
    tags = {T.MLFLOW_SOURCE_NAME: entry_point, T.MLFLOW_SOURCE_TYPE: "LOCAL"}
    if commit and commit != "unknown":
        tags[T.MLFLOW_GIT_COMMIT] = commit.removesuffix("-dirty")
    return tags


def run_note(model: str, family: str, dataset: str, fmt: str, steps: int, config_hash: str) -> str:
    """The run description (`mlflow.note.content`, markdown) shown at the top of the run page."""
    return (f"**{model}** ({family}) trained on **{dataset}** ({fmt}) for {steps} steps; config hash "
            f"`{config_hash[:12]}` (`synthmed reproduce {config_hash[:12]}` re-runs it). Samples: the `{GRID_KEY}` "
            "image chart (Chart view, step slider) and `samples/`; final metrics in `metrics/final.json`.")


def describe_experiment(client: MlflowClient, experiment_id: str, dataset: str) -> None:
    """Set the experiment's description once (a user's own description is never overwritten)."""
    exp = client.get_experiment(experiment_id)
    if T.MLFLOW_RUN_NOTE not in exp.tags:
        client.set_experiment_tag(experiment_id, T.MLFLOW_RUN_NOTE, (
            f"synthmed runs on **{dataset}**. Compare them in the Chart view (the `{GRID_KEY}` image chart shows "
            "each run's sample grid per step; it opens at step 0, before the first grid: move its slider, or "
            "⋮ → Configure → Step) or with `synthmed compare experiment=<this experiment>`."))


def describe_run(client: MlflowClient, run_id: str, experiment_id: str, cfg, fingerprint: str, full_hash: str,
                 family: str) -> None:
    """What the MLflow UI shows of a training run: Dataset column, Source, run and experiment descriptions."""
    fmt = str(cfg.dataset.datamodule.dataset.get("_target_", "?")).rsplit(".", 1)[-1]  # the reader class
    log_dataset(client, run_id, cfg.dataset.name, fingerprint, fmt, "train")
    note = run_note(cfg.model.name, family, cfg.dataset.name, fmt, int(cfg.trainer.max_steps), full_hash)
    set_tags(client, run_id, {**source_tags("synthmed train", git_sha()), T.MLFLOW_RUN_NOTE: note})
    describe_experiment(client, experiment_id, cfg.dataset.name)


def log_dataset(client: MlflowClient, run_id: str, name: str, fingerprint: str, fmt: str, context: str) -> None:
    """The data set as an MLflow input (Dataset column): name, fingerprint as digest, format; no path."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    source = CodeDatasetSource({"format": fmt, "fingerprint": fingerprint})
    dataset = MetaDataset(source, name=name, digest=fingerprint[:DIGEST_CHARS])
    inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag(T.MLFLOW_DATASET_CONTEXT, context)])]
    for attempt in range(DATASET_ATTEMPTS):
        try:
            client.log_inputs(run_id, inputs)
            return
        except MlflowException as err:
            if attempt == DATASET_ATTEMPTS - 1 or not _lost_dataset_race(err):
                raise
            time.sleep(0.1 * (attempt + 1))


def _lost_dataset_race(err: Exception) -> bool:
    """MLflow's store looks a data set up, then inserts it: the parallel jobs of a sweep, starting together on one
    data set, can all miss it and all insert, and all but one fail on the table's key (PostgreSQL: `dataset_pk`,
    sqlite: `UNIQUE constraint failed: datasets`). A retry then finds the row and links it."""
    text = str(err)
    return "dataset_pk" in text or "UNIQUE constraint failed: datasets" in text


def log_grid(client: MlflowClient, run_id: str, grid: np.ndarray, step: int) -> None:
    """One sample grid (`[H, W]` or `[H, W, 3]`, uint8) as the image chart `samples` at `step`."""
    client.log_image(run_id, grid, key=GRID_KEY, step=step)


def start_system_metrics(run_id: str, tracking_uri: str, interval_s: float):
    """MLflow's system-metrics sampler (CPU, memory, disk, network; GPU when present) for `run_id`, or None
    with a warning when psutil is missing (pip install synthmed[system-metrics])."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as err:
        log.warning("logger.system_metrics=true needs psutil (%s): system metrics are off", err)
        return None
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


def summarize_sweep(client: MlflowClient, parent_id: str, children: list, metric: str,
                    better: str | None) -> dict | None:
    """Tag the sweep's parent with its best child by `metric` (`better`: minimize | maximize) and log a comparison
    table `sweep/children.md` of every child's last value. Returns the best child's summary or None."""
    rows = sorted(((c.data.metrics.get(metric), c.info.run_name, c.info.run_id, c.info.status) for c in children),
                  key=lambda r: (r[0] is None, (r[0] if better != "maximize" else -r[0]) if r[0] is not None else 0))
    lines = [f"| child | status | {metric} |", "|---|---|---:|"]
    lines += [f"| {name} | {status} | {'–' if v is None else f'{v:.5g}'} |" for v, name, _, status in rows]

    log_text(client, parent_id, "\n".join(lines) + "\n", "sweep/children.md")
    if not rows or rows[0][0] is None or better is None:
        return None
    value, name, run_id, _ = rows[0]
    best = {tk.SWEEP_BEST_RUN: run_id, tk.SWEEP_BEST_METRIC: metric, tk.SWEEP_BEST_VALUE: f"{value:.6g}"}
    set_tags(client, parent_id, {**best, T.MLFLOW_RUN_NOTE: f"Sweep of {len(children)} runs; best by `{metric}` "
                                                            f"({better}): **{name}** ({value:.5g}). Table: "
                                                            "`sweep/children.md`."})
    return best
