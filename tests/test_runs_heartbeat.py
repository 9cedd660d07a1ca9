"""Heartbeats and `synthmed runs list|reap`: a SIGKILLed run (really killed, in a subprocess) stays RUNNING, stops
beating, is reaped KILLED with a tag saying when and why, and `resume=<run id>` finishes it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from synthmed import runs
from synthmed.tracking import heartbeat as hb
from synthmed.tracking import tags as tk
from tests.conftest import compose_train


def _run(client, name, status="RUNNING", started_min_ago=60.0, beat_min_ago=None):
    exp = client.get_experiment_by_name("x") or client.get_experiment(client.create_experiment("x"))
    now = hb.utc_now()
    run = client.create_run(exp.experiment_id, run_name=name,
                            start_time=int((now - timedelta(minutes=started_min_ago)).timestamp() * 1000))
    if beat_min_ago is not None:
        client.set_tag(run.info.run_id, tk.HEARTBEAT, hb.iso(now - timedelta(minutes=beat_min_ago)))
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_reap_closes_only_silent_running_runs(run_root, capsys):
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    silent = _run(client, "silent", beat_min_ago=20)
    alive = _run(client, "alive", beat_min_ago=1)
    never = _run(client, "never-beat", started_min_ago=30)
    young = _run(client, "young", started_min_ago=2)
    done = _run(client, "done", status="FINISHED", beat_min_ago=300)

    assert runs.main(["reap", "--older-than", "10m", "--dry-run", "--root", str(run_root)]) == 0
    assert "would reap 2 run(s)" in capsys.readouterr().out
    assert client.get_run(silent).info.status == "RUNNING"  # a dry run changes nothing

    assert runs.main(["reap", "--older-than", "10m", "--root", str(run_root)]) == 0
    status = {rid: client.get_run(rid).info.status for rid in (silent, alive, never, young, done)}
    assert status == {silent: "KILLED", alive: "RUNNING", never: "KILLED", young: "RUNNING", done: "FINISHED"}
    tag = client.get_run(silent).data.tags[tk.REAPED]
    assert re.search(r"no heartbeat for 120[01] s", tag) and "threshold 600 s" in tag and "runs reap" in tag
    run = client.get_run(silent)
    beat = hb.parse_iso(run.data.tags[tk.HEARTBEAT])
    assert run.info.end_time == int(beat.timestamp() * 1000)  # it ended after its last sign of life

    capsys.readouterr()
    runs.main(["list", "--root", str(run_root)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["run", "id", "status", "age"] and len(lines) == 6
    row = next(line for line in lines if line.startswith(alive))
    assert "RUNNING" in row and "1m ago" in row


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("45", 45)])
def test_durations(text, seconds):
    assert runs.duration_s(text) == seconds


def test_bad_duration_is_refused():
    with pytest.raises(SystemExit):
        runs.main(["reap", "--older-than", "ten minutes"])


class _Client:
    def __init__(self):
        self.tags = []

    def set_tag(self, run_id, key, value):
        self.tags.append(key)


def test_beating_beats_until_the_block_ends():
    client = _Client()
    with hb.beating(client, "r", every_s=0.1):
        time.sleep(0.55)
    beats = client.tags.count(tk.HEARTBEAT)
    time.sleep(0.3)
    assert 4 <= beats <= 8 and client.tags.count(tk.HEARTBEAT) == beats  # stopped with the block
    assert {tk.HOST, tk.PID, tk.HEARTBEAT_EVERY} <= set(client.tags)


KILLER = """
import os, signal, sys
import pytorch_lightning as pl
sys.path.insert(0, {repo!r})
import synthmed.train as t
from tests.conftest import compose_train

class Sigkill(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # no handler, no FAILED/KILLED status: what the OOM killer does

original = t.build_callbacks
t.build_callbacks = lambda cfg, suite: [*original(cfg, suite), Sigkill()]
t.train(compose_train(__import__("pathlib").Path({root!r}), {overrides!r}))
"""
BASE = ["debug=smoke", "model.process.num_inference_steps=2", "trainer.max_steps=4", "eval.n_samples=4",
        "heartbeat_s=1", "eval.metrics=[ms_ssim_diversity]", "~callbacks.generation_metrics"]


@pytest.mark.slow  # ~40 s: a subprocess training run killed with SIGKILL, then a resumed one
def test_sigkilled_run_is_reaped_and_resumed(run_root):
    repo = str(Path(__file__).resolve().parents[1])
    script = KILLER.format(repo=repo, root=str(run_root), overrides=BASE)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=run_root, timeout=300,
                          env={**os.environ, "PYTHONPATH": repo}, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "RUNNING" and tk.HEARTBEAT in run.data.tags  # what a SIGKILL leaves behind

    time.sleep(2.5)
    assert [b.run_id for b in hb.reap(client, older_than_s=2)] == [run.info.run_id]
    assert client.get_run(run.info.run_id).info.status == "KILLED"

    resume_cfg = compose_train(run_root, [*BASE, f"resume={run.info.run_id}"])
    resume_cfg.paths.output_dir = str(run_root / "outputs" / "resumed")
    t0 = time.time()
    from synthmed.train import train
    train(resume_cfg)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and hb.parse_iso(run.data.tags[tk.HEARTBEAT]).timestamp() >= t0 - 1
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps[-1] == 3 and len(steps) == len(set(steps))  # continued from the step-2 checkpoint, no duplicates
