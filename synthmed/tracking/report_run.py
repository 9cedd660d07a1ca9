"""A fit-for-use report as an MLflow child run of the run it judges (DESIGN.md: `synthmed.report=<kind>`).

All MLflow calls of such a report live here. The child carries no config hash tag, so a hash never resolves to it.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from synthmed.tracking import mlflow_utils as mt


def log_report_child(client: MlflowClient, parent_run_id: str, kind: str, folder: Path, artifact_path: str,
                     metrics: dict[str, float], params: dict[str, str]) -> str:
    """A new FINISHED child run of `parent_run_id` tagged `synthmed.report=<kind>` with `folder`'s files under
    `artifact_path/`, `metrics` (keys from names.py, None values skipped) and `params`; returns its run id."""
    parent = client.get_run(parent_run_id)
    tags = {"mlflow.parentRunId": parent_run_id, mt.TAG_REPORT: kind}
    for key in (mt.TAG_FAMILY, mt.TAG_MODEL, mt.TAG_FINGERPRINT):  # what the judged run was; never its hash
        if key in parent.data.tags:
            tags[key] = parent.data.tags[key]
    child = client.create_run(parent.info.experiment_id, run_name=f"{parent.info.run_name}-{kind}", tags=tags)
    with mt.run_status(client, child.info.run_id):
        for key, value in params.items():
            client.log_param(child.info.run_id, key, value)
        for key, value in metrics.items():
            if value is not None:
                client.log_metric(child.info.run_id, key, float(value))
        client.log_artifacts(child.info.run_id, str(folder), artifact_path)
    return child.info.run_id
