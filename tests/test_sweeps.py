"""Hydra multiruns through the real CLI: one MLflow parent run, one complete child per job, failures isolated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from synthmed.metrics import names

SMOKE = ["debug=smoke", "model.process.num_inference_steps=2", "callbacks.generation_metrics.n_samples=2",
         "eval.n_samples=4", "trainer.enable_progress_bar=false"]


def synthmed(args: list[str], root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "synthmed.cli", *args, f"paths.root={root}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=root)


def runs_of(root: Path):
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("synthmed.sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.mark.slow
def test_parallel_joblib_sweep_loses_nothing(run_root):
    proc = synthmed(["train", "-m", *SMOKE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "seed=0,1,2,3"],
                    run_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parents, children = runs_of(run_root)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(c.data.params["override.seed"] for c in children) == ["0", "1", "2", "3"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert len(client.get_metric_history(child.info.run_id, names.TRAIN_LOSS)) == 4  # every step, no loss
        assert names.MS_SSIM_DIVERSITY in child.data.metrics
        assert "metrics" in {a.path for a in client.list_artifacts(child.info.run_id)}
    assert len({c.data.tags["synthmed.config_hash"] for c in children}) == 4  # seed is semantic


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_others(run_root):
    proc = synthmed(["train", "-m", *SMOKE, "eval.split=nope,val"], run_root)
    assert proc.returncode != 0  # the sweep reports the failure
    client, parents, children = runs_of(run_root)
    assert parents[0].info.status == "FAILED"
    by_split = {c.data.params["override.eval.split"]: c for c in children}
    assert by_split["val"].info.status == "FINISHED"  # the job after the failed one still ran
    failed = by_split["nope"]
    assert failed.info.status == "FAILED"
    local = client.download_artifacts(failed.info.run_id, "error/traceback.txt", str(run_root / "dl"))
    assert "split must be one of" in Path(local).read_text()
    # after Hydra's traceback, a summary a user can act on: which job, which run, why
    summary = proc.stderr[proc.stderr.index("synthmed sweep ended FAILED"):]
    assert summary.startswith("synthmed sweep ended FAILED: 1 job(s) failed, 0 stopped, 1 finished")
    assert f"- job 0 [eval.split=nope] (run {failed.info.run_id} " in summary and "split must be one of" in summary
