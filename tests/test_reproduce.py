"""`synthmed reproduce`: a smoke run re-run from its record gives bit-equal metrics on the CPU; refusals are clear."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from synthmed import reproduce as R
from synthmed.metrics import names
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import records
from synthmed.tracking import tags as tk
from synthmed.tracking.confighash import config_hash
from tests.conftest import train_smoke_run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, mlflow_template):
    """One FINISHED smoke run: (root, client, run, full hash)."""
    root = tmp_path_factory.mktemp("reproduce_root")
    client, run, cfg = train_smoke_run(root, mlflow_template)
    return root, client, run, config_hash(cfg)


@pytest.fixture
def study(recorded, tmp_path):
    """The recorded run pinned as `tmp/experiments/smoke/runs.json`."""
    _, client, run, _ = recorded
    file = records.pin(records.from_mlflow(client, run.info.run_id), tmp_path / "experiments" / "smoke")
    return tmp_path / "experiments", file


def test_reproduces_the_recorded_metrics_exactly(recorded):
    root, client, run, full = recorded
    outcome = R.reproduce(run.info.run_id, root, tolerance=0.0)
    keys = [row[0] for row in outcome.rows]
    assert names.TRAIN_LOSS in keys and names.MS_SSIM_DIVERSITY in keys
    assert outcome.passed and all(a == b for _, a, b, _, _ in outcome.rows)  # bit-equal, not merely close
    new = client.get_run(outcome.run_id)
    assert new.info.run_id != run.info.run_id and new.info.status == "FINISHED"
    assert new.data.tags[tk.REPRODUCES] == run.info.run_id and new.data.tags[tk.REPRODUCE_VERDICT] == "pass"
    assert new.data.tags[tk.CONFIG_HASH] == full and new.info.experiment_id == run.info.experiment_id
    assert new.data.params["paths.output_dir"].startswith(str(root / "outputs" / "reproduce"))
    local = client.download_artifacts(outcome.run_id, "reproduce/verdict.json", str(root / "dl"))
    verdict = json.loads(open(local).read())
    assert verdict["passed"] and verdict["tolerance"] == 0.0


def test_a_step_checkpoint_holds_the_ema_of_its_step(recorded):
    """The periodic checkpoint of the last step and final.ckpt are taken at the same step: their EMA weights must
    be the same (the EMA used to be updated after the checkpoint callbacks, one update behind, so a resume from a
    step checkpoint, e.g. after a SIGKILL, lost an update)."""
    import torch

    folder = recorded[0] / "outputs" / "job" / "checkpoints"
    final = torch.load(folder / "final.ckpt", map_location="cpu", weights_only=True)
    (newest,) = folder.glob("step_*.ckpt")  # save_top_k=1: the newest periodic checkpoint
    step = torch.load(newest, map_location="cpu", weights_only=True)
    assert step["global_step"] == final["global_step"]
    ema = [k for k in final["state_dict"] if k.startswith("ema.")]
    assert ema, "the smoke DDPM has EMA on"
    assert all(torch.equal(step["state_dict"][k], final["state_dict"][k]) for k in ema)


def test_relocation_moves_locations_only(recorded, tmp_path):
    _, client, run, full = recorded
    rec = records.from_mlflow(client, run.info.run_id)
    old_out = rec.cfg.paths.output_dir
    moved = R.relocate(rec.cfg, tmp_path, "sqlite:///elsewhere.db")
    assert config_hash(moved) == full
    assert moved.paths.root == str(tmp_path) and moved.logger.tracking_uri == "sqlite:///elsewhere.db"
    assert moved.callbacks.checkpoint.dirpath == f"{moved.paths.output_dir}/checkpoints"
    assert old_out not in OmegaConf.to_yaml(moved)  # nothing writes into the original run's folder


def test_refuses_semantic_overrides(recorded):
    root, _, run, _ = recorded
    with pytest.raises(R.Refused, match="change the config hash"):
        R.reproduce(run.info.run_id, root, overrides=["trainer.max_steps=5"], dry_run=True)
    R.reproduce(run.info.run_id, root, overrides=["dataset.datamodule.num_workers=2"], dry_run=True)


def test_refuses_a_record_that_does_not_hash_to_its_hash(recorded, study, tmp_path):
    _, _, _, full = recorded
    roots, file = study
    entry = json.loads(file.read_text())[full]
    config = file.parent / entry["config"]
    config.write_text(config.read_text().replace("max_steps: 4", "max_steps: 5"))
    with pytest.raises(R.Refused, match=f"hashes to .*not to its recorded hash {full[:12]}"):
        R.reproduce(full[:12], tmp_path, study_roots=[roots], dry_run=True)


def test_pinned_study_reproduces_in_a_fresh_store(recorded, study, tmp_path, mlflow_template, capsys):
    _, _, run, full = recorded
    roots, _ = study
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(mlflow_template, fresh / "mlflow.db")  # the MLflow store of the record is not needed
    code = R.main([full[:12], f"paths.root={fresh}", "--experiments", str(roots), "--tolerance", "0"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "PASS: " in printed and "runs.json" in printed
    client = MlflowClient(f"sqlite:///{fresh}/mlflow.db")
    (new,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert new.data.tags[tk.REPRODUCES] == run.info.run_id  # runs.json keeps the original run id


def test_a_metric_that_differs_fails_with_exit_1(recorded, study, tmp_path, mlflow_template, capsys):
    _, _, _, full = recorded
    roots, file = study
    runs = json.loads(file.read_text())
    runs[full]["metrics"][names.MS_SSIM_DIVERSITY] *= 1.001
    file.write_text(json.dumps(runs))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(mlflow_template, fresh / "mlflow.db")
    assert R.main([full[:12], f"paths.root={fresh}", "--experiments", str(roots)]) == 1
    printed = capsys.readouterr().out
    assert "FAIL: " in printed and re.search(rf"{names.MS_SSIM_DIVERSITY} .*FAIL", printed)


def test_environment_differences_are_reported(recorded, study, tmp_path, capsys):
    _, _, _, full = recorded
    roots, file = study
    env = file.parent / json.loads(file.read_text())[full]["requirements"]
    current = records.parse_requirements(mt.requirements())
    lines = [f"{n}=={'0.0.1' if n == 'torch' else v}" for n, v in current.items() if n != "numpy"]
    env.write_text("\n".join([*lines, "notinstalled==1.0"]) + "\n")
    outcome = R.reproduce(full[:12], tmp_path, study_roots=[roots], dry_run=True)
    assert not (tmp_path / "mlflow.db").exists()  # a dry run in a folder without a store creates none
    assert set(outcome.env) == {("torch", "0.0.1", current["torch"]), ("numpy", "-", current["numpy"]),
                                ("notinstalled", "1.0", "-")}
    printed = capsys.readouterr().out
    assert "3 package(s) differ" in printed and "git sha:" in printed


def test_pin_from_the_command_line_writes_a_complete_entry(recorded, tmp_path, capsys):
    root, client, run, full = recorded
    study = tmp_path / "experiments" / "smoke"
    assert R.main([full[:12], f"paths.root={root}", "--pin", str(study)]) == 0
    entry = json.loads((study / "runs.json").read_text())[full]
    assert entry["run_id"] == run.info.run_id and entry["git_sha"] == run.data.tags[tk.GIT_SHA]
    assert entry["metrics"] == records.from_mlflow(client, run.info.run_id).metrics
    assert config_hash(OmegaConf.load(study / entry["config"])) == full
    assert "torch==" in (study / entry["requirements"]).read_text()
    assert f"pinned {full[:12]}" in capsys.readouterr().out


def test_metric_comparison_is_relative():
    rows = R.compare_metrics({"a": 100.0, "b": 0.0, "c": math.nan, "d": 1.0, "e": 2.0},
                             {"a": 100.00001, "b": 0.0, "c": math.nan, "d": 1.1}, tolerance=1e-6)
    ok = {key: good for key, _, _, _, good in rows}
    assert ok == {"a": True, "b": True, "c": True, "d": False, "e": False}  # e: missing in the re-run


def test_not_found_and_bad_arguments_exit_2(recorded, tmp_path, capsys):
    root, *_ = recorded
    assert R.main(["abcdef123456", f"paths.root={root}", "--experiments", str(tmp_path)]) == 2
    assert "no run with id or config hash 'abcdef123456'" in capsys.readouterr().err
    assert R.main(["abcdef123456", "notakeyvalue"]) == 2


@pytest.mark.slow
def test_cli_reproduces_in_a_new_process(recorded):
    # A fresh interpreter: catches state that an in-process re-run shares with the recording (RNG, caches).
    root, _, run, _ = recorded
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "synthmed.reproduce", run.info.run_id, f"paths.root={root}",
                           "--tolerance", "0"], capture_output=True, text=True, env=env, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS: " in proc.stdout
