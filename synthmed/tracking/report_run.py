"""A fit-for-use report as an MLflow child run of the run it judges (DESIGN.md: `synthmed.report=<kind>`).

All MLflow calls of such a report live here. The child carries no config hash tag, so a hash never resolves to it.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk


def log_report_child(client: MlflowClient, parent_run_id: str, kind: str, folder: Path, artifact_path: str,
                     metrics: dict[str, float], params: dict[str, str]) -> str:
    """A new FINISHED child run of `parent_run_id` tagged `synthmed.report=<kind>` with `folder`'s files under
    `artifact_path/`, `metrics` (keys from names.py, None values skipped) and `params`; returns its run id."""
    parent = client.get_run(parent_run_id)
    tags = {tk.REPORT: kind}
    for key in (tk.MODEL_FAMILY, tk.MODEL, tk.DATASET_FINGERPRINT):  # what the judged run was; never its hash
        if key in parent.data.tags:
            tags[key] = parent.data.tags[key]
    child = mt.child_run(client, parent, f"{parent.info.run_name}-{kind}", tags)
    with mt.run_status(client, child.run_id):
        for key, value in params.items():
            client.log_param(child.run_id, key, value)
        for key, value in metrics.items():
            if value is not None:
                client.log_metric(child.run_id, key, float(value))
        client.log_artifacts(child.run_id, str(folder), artifact_path)
    return child.run_id
