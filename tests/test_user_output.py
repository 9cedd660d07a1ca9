"""Output a new user can act on (issue 21, item 11): the fid CLI's weights messages, smoke's evaluation interval,
the step progress bar, quiet checkpoint notices."""

from __future__ import annotations

import hashlib
import warnings

import pytest
from PIL import Image

from synthmed.callbacks.checkpoint import quiet_fresh_start_notices
from synthmed.callbacks.progress import StepProgressBar, progress_bars
from synthmed.metrics import fid_cli, inception
from tests.conftest import compose_train


@pytest.fixture
def two_folders(tmp_path):
    for name, value in (("a", 90), ("b", 160)):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.new("RGB", (32, 32), (value + i, value, value)).save(tmp_path / name / f"{i}.png")
    return str(tmp_path / "a"), str(tmp_path / "b")


def test_fid_cli_missing_weights_names_its_own_flag(two_folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert fid_cli.main([*two_folders]) == 2
    err = capsys.readouterr().err
    assert "--weights PATH" in err and "metrics.fid_weights" not in err and inception.WEIGHTS_FILE in err


def test_fid_cli_says_when_weights_are_not_the_official_file(weights_home, monkeypatch, capsys):
    """The official name carries the first 8 hex digits of the file's sha256 (torch.hub's convention)."""
    random_weights = weights_home / "hub" / "checkpoints" / inception.WEIGHTS_FILE
    digest = hashlib.sha256(random_weights.read_bytes()).hexdigest()
    assert inception.WEIGHTS_FILE == f"pt_inception-2015-12-05-{inception.OFFICIAL_SHA256_PREFIX}.pth"
    assert not digest.startswith(inception.OFFICIAL_SHA256_PREFIX)  # the test's random weights
    assert inception.is_official(random_weights) is False
    fid_cli.checked_weights(str(random_weights))
    assert "not the official FID Inception weights" in capsys.readouterr().err
    monkeypatch.setattr(inception, "OFFICIAL_SHA256_PREFIX", digest[:8])  # as if it were the official file
    assert inception.is_official(random_weights) is True
    fid_cli.checked_weights(str(random_weights))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("steps", "interval"), [(None, 2), ("500", 250), ("3", 1), ("1", 1)])
def test_smoke_evaluates_twice_whatever_max_steps(tmp_path, steps, interval):
    extra = [] if steps is None else [f"trainer.max_steps={steps}"]
    cfg = compose_train(tmp_path, ["debug=smoke", *extra])
    assert cfg.trainer.val_check_interval == interval
    assert cfg.callbacks.checkpoint.every_n_train_steps == interval


def test_progress_bar_counts_steps_toward_max_steps():
    class Trainer:  # what the bar reads
        max_steps, global_step = 500, 120

    bar = StepProgressBar()
    bar._trainer = Trainer()
    bar.on_train_start(Trainer())
    assert (bar.train_progress_bar.total, bar.train_progress_bar.n) == (500, 120)
    assert "steps" in bar.train_progress_bar.desc
    bar.train_progress_bar.close()
    assert progress_bars(False) == [] and isinstance(progress_bars(True)[0], StepProgressBar)


def test_fresh_start_notices_are_silenced_and_others_kept():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_fresh_start_notices():
            warnings.warn("`.fit(ckpt_path=None)` was called without a model. The last model ...", UserWarning, stacklevel=1)
            warnings.warn('.fit(ckpt_path="last") is set, but there is no last checkpoint available.', UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else"]


def test_preflight_skipped_files_are_in_the_run_record():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from synthmed.data.preflight import BadFile
    from synthmed.tracking.run_record import dataset_record

    bad = [BadFile("/data/a.nii.gz", "constant (min == max)"), BadFile("/data/b.nii", "not a NIfTI file")]
    class Split(list):  # a training split of 5 items with what the pre-flight check skipped
        quarantine = bad

    train_set = Split(range(5))
    datamodule = SimpleNamespace(split=lambda name: train_set, fingerprint="f", intensity={})
    cfg = OmegaConf.create({"dataset": {"name": "nifti", "spatial_dims": 3}})
    assert dataset_record(cfg, datamodule)["skipped_files"] == [str(b) for b in bad]
    assert "/data/a.nii.gz" in dataset_record(cfg, datamodule)["skipped_files"][0]
    assert dataset_record(cfg, datamodule)["n_train"] == 5  # what the model and dataset cards report
    train_set.quarantine = []
    assert dataset_record(cfg, datamodule)["skipped_files"] == []


def test_sample_help_lists_its_own_settings_not_the_training_groups(tmp_path):
    """Hydra renders `hydra.help.template`; its default adds `$APP_CONFIG_GROUPS` (every group under conf/)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from synthmed.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("sample", overrides=[f"paths.root={tmp_path}"], return_hydra_config=True)
        train = compose("train", overrides=[f"paths.root={tmp_path}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert "$CONFIG" in cfg.hydra.help.template and "APP_CONFIG_GROUPS" not in cfg.hydra.help.template
    assert "APP_CONFIG_GROUPS" in train.hydra.help.template  # train keeps listing its groups
