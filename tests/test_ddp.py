"""DDP on the CPU (hardware=ddp_sim, 2 gloo ranks) through the real CLI: one run, logged once, complete."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from synthmed.metrics import names
from tests.test_sweeps import SMOKE, synthmed


@pytest.mark.slow
def test_ddp_sim_trains_and_only_rank_zero_logs(run_root):
    proc = synthmed(["train", *SMOKE, "hardware=ddp_sim"], run_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, "a rank other than zero created its own MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["hardware.devices"] == "2"
    history = client.get_metric_history(run.info.run_id, names.TRAIN_LOSS)
    assert sorted(m.step for m in history) == sorted({m.step for m in history})  # each step logged once
    assert names.MS_SSIM_DIVERSITY in run.data.metrics and names.VAL_LOSS in run.data.metrics
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {"samples/step_0000002.png", "samples/step_0000004.png"} <= arts
    final = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert final == ["checkpoints/final.ckpt"]
