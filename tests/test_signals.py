"""SIGINT (Ctrl-C) and SIGTERM sent to a real `synthmed train` process, mid-training and during the final evaluation.

Each stopped run must end KILLED with the shell's exit status (130, 143), leave a checkpoint and no final record,
and `resume=` must end bit-equal to an uninterrupted run. A finished run is refused for resume.
The child is the real entry point; it only waits, at a known step, for the signal the test sends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import synthmed.train as train_module
from tests.conftest import compose_train

REPO = Path(__file__).resolve().parents[1]
BASE = ["debug=smoke", "model.process.num_inference_steps=2", "trainer.max_steps=7",
        "trainer.val_check_interval=3", "eval.n_samples=4"]
STOP_AT = 4  # the training step the SIGINT lands after (mid-epoch: 4 steps per epoch, batch 4 of 16 images)

# The child: the real `synthmed train` entry point, plus one hook that writes `ready` and waits for the signal,
# either after training step STOP_AT (`fit`) or at the start of the final evaluation (`eval`).
CHILD = r"""
import sys, time
from pathlib import Path
import pytorch_lightning as pl
import synthmed.train as t

where, ready = sys.argv[1], Path(sys.argv[2])
sys.argv = ["synthmed-train", *sys.argv[3:]]

def wait(stop):
    ready.write_text("ready")
    deadline = time.time() + 60
    while not stop() and time.time() < deadline:
        time.sleep(0.02)

class WaitAt(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == STOP_AT:
            wait(lambda: trainer.received_sigterm)

if where == "fit":
    build = t.build_callbacks
    t.build_callbacks = lambda cfg, suite: [*build(cfg, suite), WaitAt()]
else:
    evaluate = t.evaluate_generation
    def waiting(*a, **k):
        wait(lambda: False)  # the signal raises out of this wait
        return evaluate(*a, **k)
    t.evaluate_generation = waiting
t.main()
""".replace("STOP_AT", str(STOP_AT))


def _root(tmp_path: Path, template: Path, name: str) -> Path:
    root = tmp_path / name
    root.mkdir()
    shutil.copy(template, root / "mlflow.db")
    return root


def _start_child(root: Path, where: str) -> subprocess.Popen:
    """`synthmed train` in a child process that will wait at `where` (see CHILD) for a signal."""
    args = [sys.executable, "-c", CHILD, where, str(root / "ready"), *BASE, f"paths.root={root}",
            f"hydra.run.dir={root}/outputs/job"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(child: subprocess.Popen, root: Path, signum: int) -> tuple[int, str]:
    """Send `signum` once the child waits; its exit status and output."""
    deadline = time.time() + 240
    while not (root / "ready").exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert (root / "ready").exists(), f"child never got there: {child.communicate(timeout=30)[0][-3000:]}"
    child.send_signal(signum)
    out, _ = child.communicate(timeout=120)
    return child.returncode, out


def _only_run(root: Path):
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, run


def _artifacts(root: Path, run) -> Path:
    return root / "mlartifacts" / run.info.run_id / "artifacts"


def _state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def _resume(root: Path, folder: str) -> dict:
    cfg = compose_train(root, [*BASE, "resume=last"])
    cfg.paths.output_dir = str(root / "outputs" / folder)
    return train_module.train(cfg)


def _assert_bit_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ after resume, e.g. {different[:3]}"


@pytest.mark.slow
def test_sigint_and_sigterm_stop_cleanly_and_resume_bit_equal(tmp_path, mlflow_template):
    # Both children at once (their imports dominate). The one stopped during its final evaluation trained
    # uninterrupted: its final.ckpt, written before the evaluation, is the reference state.
    sigint_root = _root(tmp_path, mlflow_template, "sigint")
    sigterm_root = _root(tmp_path, mlflow_template, "sigterm_eval")
    sigint_child, sigterm_child = _start_child(sigint_root, "fit"), _start_child(sigterm_root, "eval")

    # Ctrl-C mid-training: stops at the step boundary, on_exception.ckpt, KILLED, exit 130, no final record.
    status, out = _stop(sigint_child, sigint_root, signal.SIGINT)
    assert status == 130, out[-3000:]
    _, run = _only_run(sigint_root)
    assert run.info.status == "KILLED"
    assert (sigint_root / "outputs/job/checkpoints/on_exception.ckpt").is_file()
    assert not (_artifacts(sigint_root, run) / "metrics/final.json").exists()
    assert not (_artifacts(sigint_root, run) / "error").exists()  # a stop is not an error
    assert "KILLED" in (sigint_root / "outputs/job/train.log").read_text()  # the job's log says how it ended

    # SIGTERM during the final evaluation: KILLED, exit 143, final.ckpt kept, no final.json.
    status, out = _stop(sigterm_child, sigterm_root, signal.SIGTERM)
    assert status == 143, out[-3000:]
    _, run_b = _only_run(sigterm_root)
    assert run_b.info.status == "KILLED"
    reference = _state(sigterm_root / "outputs/job/checkpoints/final.ckpt")
    assert not (_artifacts(sigterm_root, run_b) / "metrics/final.json").exists()

    # Both resume to the same weights and metrics: the Ctrl-C'd run bit-equal to the uninterrupted training.
    evaluated = _resume(sigterm_root, "resumed")
    _assert_bit_equal(reference, _state(sigterm_root / "outputs/resumed/checkpoints/final.ckpt"))
    assert json.loads((_artifacts(sigterm_root, run_b) / "metrics/final.json").read_text())["step"] == 7
    assert _resume(sigint_root, "resumed") == pytest.approx(evaluated, rel=0, abs=0)
    _assert_bit_equal(reference, _state(sigint_root / "outputs/resumed/checkpoints/final.ckpt"))
    assert _only_run(sigint_root)[1].info.status == "FINISHED"

    # A finished record never changes: resume= of it is refused and says how to go on.
    final_json = (_artifacts(sigint_root, run) / "metrics/final.json").read_text()
    with pytest.raises(ValueError, match="FINISHED.*new run.*trainer.max_steps"):
        _resume(sigint_root, "again")
    assert (_artifacts(sigint_root, run) / "metrics/final.json").read_text() == final_json


# --- the guard's phases, in this process (fast) ----------------------------------------------------------------

def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # Python runs the handler at the next bytecode boundary of the main thread


def test_guard_relays_ctrl_c_to_lightnings_sigterm_path_during_fit():
    from synthmed.tracking.lifecycle import Interrupted, SignalGuard

    seen = []
    with pytest.raises(Interrupted) as err, SignalGuard() as guard, guard.fitting():
        ours = signal.getsignal(signal.SIGTERM)
        # what Lightning's _SignalConnector installs: its notifier, then the handler it found (ours)
        signal.signal(signal.SIGTERM, lambda s, f: (seen.append(s), ours(s, f)))
        _deliver(signal.SIGINT)
        assert seen == [signal.SIGTERM]  # training goes on to the step boundary: nothing raised here
        signal.signal(signal.SIGTERM, ours)
    assert err.value.code == 130  # raised when fit returns, with Ctrl-C's exit status


def test_guard_defers_a_signal_while_critical_then_stops():
    from synthmed.tracking.lifecycle import Interrupted, SignalGuard

    done = []
    with pytest.raises(Interrupted) as err, SignalGuard() as guard:
        guard._phase = "after"
        with guard.critical():
            _deliver(signal.SIGTERM)
            done.append("record complete")
    assert done == ["record complete"] and err.value.code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


@pytest.mark.slow
def test_sigterm_to_a_multirun_ends_job_and_parent_killed(tmp_path, mlflow_template):
    # `synthmed train -m seed=0,1` stopped during its first job: exit 143, that job's run and the sweep's parent
    # KILLED (never left RUNNING), the second job never started, and the summary says what was stopped.
    root = _root(tmp_path, mlflow_template, "sweep")
    args = [sys.executable, "-c", CHILD, "fit", str(root / "ready"), "-m", *BASE, "seed=0,1", f"paths.root={root}",
            f"hydra.sweep.dir={root}/multirun"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code, out = _stop(child, root, signal.SIGTERM)
    assert code == 143, out[-3000:]
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("synthmed.sweep") == "parent"]
    (job,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == job.info.status == "KILLED" and job.data.params["override.seed"] == "0"
    assert "synthmed sweep ended KILLED" in out and f"- run {job.info.run_id}" in out
