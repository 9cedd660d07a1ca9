"""3D DDPM smoke training on real NIfTI volumes (nibabel's anatomical.nii), then NIfTI export in its geometry."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from synthmed.sample import sample
from synthmed.train import train
from tests.conftest import compose_train

ANATOMICAL = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


@pytest.fixture
def volumes(tmp_path):
    """Six subjects: the real anatomical volume with subject-specific contrast and noise, as .nii.gz."""
    real = nib.load(ANATOMICAL)
    data = real.get_fdata().astype(np.float32)
    rng = np.random.default_rng(0)
    folder = tmp_path / "nifti"
    folder.mkdir()
    for i in range(6):
        vol = data * rng.uniform(0.8, 1.2) + rng.normal(0, 0.02 * data.std(), data.shape)
        nib.save(nib.Nifti1Image(vol.astype(np.float32), real.affine), folder / f"subject{i}.nii.gz")
    return folder


def test_ddpm_3d_smoke_on_nifti_and_export(run_root, volumes, tmp_path):
    cfg = compose_train(run_root, ["dataset=nifti", "debug=smoke", "dataset.size=[16,16,16]",
                                   f"dataset.datamodule.dataset.root={volumes}", "dataset.datamodule.batch_size=2",
                                   "model.process.num_inference_steps=2", "eval.n_samples=4"])
    values = train(cfg)
    assert np.isfinite(values["val/ms_ssim_diversity"])
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("ddpm-nifti-")
    assert "samples/step_0000004.png" in [a.path for a in client.list_artifacts(run.info.run_id, "samples")]

    out = tmp_path / "exported"
    (path, *_) = sample(compose_train(run_root, [f"run={run.info.run_id}", "n=2", "format=nifti", f"out={out}"],
                                      config_name="sample"))
    img = nib.load(path)
    assert img.shape == (16, 16, 16)
    assert img.header["descrip"].tobytes().startswith(b"SYNTHETIC")
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), [2.0, 2.0, 2.0])  # the data's 2 mm spacing
    assert len(img.header.extensions) == 0
