"""A sweep that does not finish says which jobs failed and why, and its parent run never stays RUNNING after a
signal; launchers whose jobs print elsewhere (submitit) get progress lines. The callback is driven in-process as
Hydra drives it (the real multirun is in test_sweeps.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.lifecycle import Interrupted
from synthmed.tracking.sweep import URI_ENV, MLflowSweepCallback, SweepProgress, prints_elsewhere

BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def sweep_config(root: Path, launcher: str = BASIC):
    return OmegaConf.create({
        "logger": {"tracking_uri": f"sqlite:///{root}/mlflow.db"}, "paths": {"root": str(root)},
        "experiment_name": "sweeps", "optimized_metric": None, "metrics": {"fid_weights": str(root / "none.pth")},
        "hydra": {"overrides": {"task": ["eval.split=nope,val,bad"]}, "sweep": {"dir": str(root / "multirun")},
                  "launcher": {"_target_": launcher}, "job": {"num": 0}, "runtime": {"output_dir": ""}}})


def child(client: MlflowClient, parent: str, split: str, status: str, error: str | None = None) -> str:
    run = mt.child_run(client, client.get_run(parent), f"ddpm-{split}")
    client.log_param(run.run_id, "override.eval.split", split)
    client.log_param(run.run_id, "override.debug", "smoke")  # shared by every job: left out of the summary
    if error:
        client.set_tag(run.run_id, tk.ERROR, error)
    client.set_terminated(run.run_id, status)
    return run.run_id


def job_failed(callback, cfg, num: int, split: str, exc: Exception) -> None:
    """What Hydra's run_job does in the job's process after the task raised."""
    job = OmegaConf.merge(cfg, {"hydra": {"job": {"num": num},
                                          "runtime": {"output_dir": str(Path(cfg.hydra.sweep.dir) / str(num))}}})
    ret = JobReturn(overrides=["debug=smoke", f"eval.split={split}"], status=JobStatus.FAILED, _return_value=exc)
    callback.on_job_end(job, ret)


@pytest.fixture
def sweep(run_root, monkeypatch):
    monkeypatch.delenv(mt.PARENT_ENV, raising=False)
    callback = MLflowSweepCallback()
    cfg = sweep_config(run_root)
    callback.on_multirun_start(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    parent = callback.parent
    yield callback, cfg, client, parent
    callback._close("FAILED")  # what atexit does; a no-op once closed
    os.environ.pop(URI_ENV, None)


def test_a_failed_sweep_lists_each_failed_job_with_its_reason(sweep, capsys):
    callback, cfg, client, parent = sweep
    failed_run = child(client, parent, "nope", "FAILED", "ValueError: split must be one of train|val|test")
    child(client, parent, "val", "FINISHED")
    job_failed(callback, cfg, 0, "nope", ValueError("split must be one of train|val|test, got 'nope'"))
    job_failed(callback, cfg, 2, "bad", ValueError("dataset.size=50 is not a multiple of 4"))  # before any run
    callback.on_multirun_end(cfg)

    assert client.get_run(parent).info.status == "FAILED"
    err = capsys.readouterr().err
    assert "synthmed sweep ended FAILED: 2 job(s) failed, 0 stopped, 1 finished" in err
    assert f"- job 0 [eval.split=nope] (run {failed_run} ddpm-nope): ValueError: split must be one of" in err
    assert "- job 2 [eval.split=bad] (no run created): ValueError: dataset.size=50 is not a multiple of 4" in err
    assert "eval.split=val" not in err  # the finished job is not a failure
    local = client.download_artifacts(parent, "sweep/failures.md", str(Path(cfg.paths.root) / "dl"))
    assert Path(local).read_text().strip() == err.strip()


def test_a_finished_sweep_prints_no_failure_summary(sweep, capsys):
    callback, cfg, client, parent = sweep
    child(client, parent, "val", "FINISHED")
    callback.on_multirun_end(cfg)
    assert client.get_run(parent).info.status == "FINISHED"
    assert "synthmed sweep ended" not in capsys.readouterr().err


def test_a_signal_between_jobs_ends_the_parent_killed(sweep, capsys):
    callback, cfg, client, parent = sweep
    child(client, parent, "val", "FINISHED")
    with pytest.raises(Interrupted) as stopped:
        signal.raise_signal(signal.SIGTERM)  # the default action would kill the process and leave it RUNNING
    assert stopped.value.code == 143
    callback._close("FAILED")  # atexit, after the SystemExit unwound Hydra
    assert client.get_run(parent).info.status == "KILLED"
    assert "stopped by SIGTERM between jobs" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is not callback._on_signal  # the previous handler is back


def test_a_job_stopped_by_a_signal_ends_the_parent_killed(sweep, capsys):
    callback, cfg, client, parent = sweep
    child(client, parent, "val", "FINISHED")
    killed = child(client, parent, "nope", "KILLED", "Interrupted: stopped by SIGINT (exit status 130)")
    callback._close("FAILED")  # the job's Interrupted (a SystemExit) unwound Hydra: atexit closes the parent
    assert client.get_run(parent).info.status == "KILLED"
    assert f"- run {killed} ddpm-nope [eval.split=nope] KILLED: Interrupted: stopped by SIGINT" in capsys.readouterr().err


def test_submitit_sweeps_print_progress_as_counts_change(sweep, capsys):
    callback, cfg, client, parent = sweep
    assert prints_elsewhere(sweep_config(Path(cfg.paths.root), SUBMITIT)) and not prints_elsewhere(cfg)
    progress = SweepProgress(client, parent, Path(cfg.hydra.sweep.dir), every_s=0.05)
    running = mt.child_run(client, client.get_run(parent), "ddpm-running").run_id
    child(client, parent, "val", "FINISHED")
    assert progress.line().startswith("synthmed sweep: 1 running, 1 finished, 0 failed or stopped")
    progress.start()
    client.set_terminated(running, "FAILED")
    deadline = time.monotonic() + 20
    while "0 running" not in progress._last and time.monotonic() < deadline:
        time.sleep(0.05)
    progress.stop()
    err = capsys.readouterr().err
    assert "synthmed sweep: jobs submitted; their output goes to" in err
    assert "synthmed sweep: 0 running, 1 finished, 1 failed or stopped" in err
