"""The warm `synthmed` (tests/warm_cli.py) behaves like the console script: output, exit status, cwd, environment."""

from __future__ import annotations

import os
import subprocess
import sys


def _cold(*args):
    return subprocess.run([sys.executable, "-m", "synthmed.cli", *args], capture_output=True, text=True, timeout=120)


def test_same_output_and_status_as_the_cold_command(warm_synthmed):
    for args in (["--help"], ["no-such-command"], []):
        warm = subprocess.run([warm_synthmed, *args], capture_output=True, text=True, timeout=120)
        cold = _cold(*args)
        assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr), args


def test_the_command_gets_the_callers_cwd_and_environment(warm_synthmed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    (tmp_path / "a").mkdir()
    done = subprocess.run([warm_synthmed, "runs", "list"], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path / "a")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a" / "mlflow.db").is_file()  # the store of the caller's working directory
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'env.db'}"
    done = subprocess.run([warm_synthmed, "runs", "list"], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "env.db").is_file() and not (tmp_path / "mlflow.db").exists()  # the caller's environment
