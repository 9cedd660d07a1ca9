"""Resume: a run killed by SIGTERM mid-epoch and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

import synthmed.train as train_module
from synthmed.callbacks import rng
from synthmed.data.datamodule import EpochSampler
from tests.conftest import compose_train

# 16 training images, batch 4: 4 steps per epoch; 7 steps cross an epoch boundary; the kill lands mid-epoch.
BASE = ["debug=smoke", "model.process.num_inference_steps=2", "trainer.max_steps=7",
        "trainer.val_check_interval=3", "eval.n_samples=4"]
KILL_AT = 5


class SigtermAt(pl.Callback):
    """Sends this process a real SIGTERM after step `step`, as a cluster scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _final_state(root, job: str = "job") -> dict:
    ckpt = torch.load(root / f"outputs/{job}/checkpoints/final.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def _fresh_root(tmp_path, mlflow_template, name):
    root = tmp_path / name
    root.mkdir()
    shutil.copy(mlflow_template, root / "mlflow.db")
    return root


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(tmp_path, mlflow_template, monkeypatch):
    straight_root = _fresh_root(tmp_path, mlflow_template, "straight")
    straight = train_module.train(compose_train(straight_root, BASE))

    root = _fresh_root(tmp_path, mlflow_template, "killed")
    original = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda cfg, suite: [*original(cfg, suite), SigtermAt(KILL_AT)])
    with pytest.raises(SystemExit):  # Lightning turns SIGTERM into SIGTERMException at the next batch
        train_module.train(compose_train(root, BASE))
    monkeypatch.setattr(train_module, "build_callbacks", original)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (killed,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert killed.info.status == "KILLED"
    assert (root / "outputs/job/checkpoints/on_exception.ckpt").is_file()

    # A new job folder, as a new Hydra invocation gets: the checkpoint is found through the run's tag only.
    resume_cfg = compose_train(root, [*BASE, "resume=last"])
    resume_cfg.paths.output_dir = str(root / "outputs" / "resumed")
    resumed = train_module.train(resume_cfg)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    straight_client = MlflowClient(f"sqlite:///{straight_root}/mlflow.db")
    (straight_run,) = straight_client.search_runs([e.experiment_id for e in straight_client.search_experiments()])
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    expected = sorted(m.step for m in straight_client.get_metric_history(straight_run.info.run_id, "train/loss"))
    assert steps == expected  # one history, no gap and no step logged twice across the kill

    a, b = _final_state(straight_root), _final_state(root, "resumed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=f"{key} differs after resume")
    assert resumed == pytest.approx(straight, rel=0, abs=0)


def test_a_new_run_refuses_a_folder_with_checkpoints_of_an_earlier_one(run_root):
    ckpt_dir = run_root / "outputs" / "job" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "last.ckpt").write_bytes(b"an earlier run's state")
    with pytest.raises(FileExistsError, match=r"earlier run \(last.ckpt\): continue it with resume="):
        train_module.train(compose_train(run_root, BASE))
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []  # no run started


def test_resume_refuses_a_different_config(run_root):
    train_module.train(compose_train(run_root, [*BASE, "trainer.max_steps=2", "trainer.val_check_interval=2"]))
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    with pytest.raises(ValueError, match="recorded with config hash .* but this config hashes to"):
        train_module.train(compose_train(run_root, [*BASE, "seed=5", f"resume={run.info.run_id}"]))


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = rng.capture()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({"rng": state}, tmp_path / "s.pt")
    rng.restore_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_epoch_sampler_order_depends_on_seed_and_epoch_and_skips():
    s = EpochSampler(10, seed=3)
    first = list(s)
    assert sorted(first) == list(range(10)) and list(EpochSampler(10, seed=3)) == first
    s.set_epoch(1)
    second = list(s)
    assert second != first
    s.skip_in(1, 4)
    assert list(s) == second[4:] and len(s) == 10
    s.set_epoch(2)
    assert len(list(s)) == 10  # the skip applies to its epoch only


def test_balanced_sampler_draws_every_class_equally_often_and_resumes(tmp_path):
    from scipy.stats import binomtest

    from synthmed.config import instantiate
    from tests.conftest import compose_train

    cfg = compose_train(tmp_path, ["dataset.size=16", "dataset.datamodule.balance=label"])
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    labels = torch.as_tensor(datamodule.split("train").covariates()["label"])
    assert labels.float().mean() == pytest.approx(0.1, abs=0.01)  # the rare class is rare in the data
    sampler = EpochSampler(len(labels), 0, datamodule.sampling_weights())
    drawn = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    lesions = int(labels[drawn].sum())
    assert binomtest(lesions, len(drawn), 0.5).pvalue > 1e-3  # ~half lesions, as balanced draws give
    sampler.set_epoch(2)
    again = list(sampler)
    sampler.skip_in(2, 7)
    assert list(sampler) == again[7:]  # a resumed epoch continues the same draws
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape[0] == 16
    with pytest.raises(Exception, match=r"dataset.datamodule.balance must be one of \(None, 'label'\), got 'sex'"):
        instantiate(compose_train(tmp_path, ["dataset.datamodule.balance=sex"]).dataset.datamodule,
                    "dataset.datamodule")
