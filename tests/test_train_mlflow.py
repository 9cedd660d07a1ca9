"""A smoke training run is recorded in MLflow and read back: params, tags, metrics, artifacts, status."""

from __future__ import annotations

import json
import re

import pytest
import torch
from mlflow.tracking import MlflowClient

from synthmed.metrics import names
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.confighash import config_hash
from synthmed.train import train
from tests.conftest import compose_train

FAST = ["debug=smoke", "model.process.num_inference_steps=3"]


def _only_run(client: MlflowClient):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return runs[0]


def _artifacts(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return out


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, mlflow_template):
    import shutil

    root = tmp_path_factory.mktemp("smoke_root")
    shutil.copy(mlflow_template, root / "mlflow.db")
    cfg = compose_train(root, FAST)
    values = train(cfg)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    return cfg, values, client, _only_run(client), root


def test_run_is_named_tagged_and_finished(smoke_run):
    cfg, _, client, run, _ = smoke_run
    full = config_hash(cfg)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"ddpm-phantom2d-{full[:8]}"
    assert client.get_experiment(run.info.experiment_id).name == "phantom2d"
    tags = run.data.tags
    assert tags[tk.CONFIG_HASH] == full
    assert tags[tk.MODEL_FAMILY] == "diffusion"
    assert re.fullmatch(r"[0-9a-f]{64}", tags[tk.DATASET_FINGERPRINT])
    assert tags[tk.VERSION]
    assert re.fullmatch(r"([0-9a-f]{40}(-dirty)?|unknown)", tags[tk.GIT_SHA])


def test_params_are_the_flattened_resolved_config(smoke_run):
    cfg, _, _, run, root = smoke_run
    params = run.data.params
    assert params["model._target_"] == "synthmed.models.ddpm.DDPMModule"
    assert params["trainer.max_steps"] == str(cfg.trainer.max_steps) == "4"
    assert params["dataset.image_shape"] == "[1, 16, 16]"
    assert params["paths.root"] == str(root)


def test_metrics_are_logged_under_the_shared_keys(smoke_run):
    _, values, client, run, _ = smoke_run
    history = client.get_metric_history(run.info.run_id, names.TRAIN_LOSS)
    assert len(history) >= 3 and all(torch.isfinite(torch.tensor(m.value)) for m in history)
    assert names.VAL_LOSS in run.data.metrics
    diversity = client.get_metric_history(run.info.run_id, names.MS_SSIM_DIVERSITY)
    assert {m.step for m in diversity} >= {2, 4}  # the two evaluations (and the final one at step 4)
    assert values[names.MS_SSIM_DIVERSITY] == pytest.approx(run.data.metrics[names.MS_SSIM_DIVERSITY])


def test_fid_without_weights_is_skipped_with_a_tag(smoke_run):
    _, values, _, run, _ = smoke_run
    assert names.FID not in values and names.FID not in run.data.metrics
    assert names.MEMORIZATION_RATE in values  # the full suite runs at the end of training
    reason = run.data.tags["synthmed.fid.skipped"]
    assert "pt_inception-2015-12-05-6726825d.pth" in reason and "hub" in reason


def test_artifacts_are_recorded(smoke_run):
    cfg, values, client, run, root = smoke_run
    arts = _artifacts(client, run.info.run_id)
    assert "config/config.yaml" in arts and "env/requirements.txt" in arts
    assert "samples/step_0000002.png" in arts and "samples/step_0000004.png" in arts
    assert "checkpoints/final.ckpt" in arts and "metrics/final.json" in arts
    local = client.download_artifacts(run.info.run_id, "metrics/final.json", str(root / "dl"))
    final = json.loads(open(local).read())
    assert final["step"] == 4 and final["metrics"] == pytest.approx(values)
    assert str(root) in run.info.artifact_uri  # artifacts live under paths.root
    ckpt = client.download_artifacts(run.info.run_id, "checkpoints/final.ckpt", str(root / "dl"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert any(k.startswith("ema.") for k in state["state_dict"])


def test_recorded_config_recomposes_to_the_same_hash(smoke_run):
    from omegaconf import OmegaConf

    cfg, _, client, run, root = smoke_run
    local = client.download_artifacts(run.info.run_id, "config/config.yaml", str(root / "dl"))
    assert config_hash(OmegaConf.load(local)) == config_hash(cfg)


def test_found_by_id_and_by_hash_prefix(smoke_run):
    cfg, _, client, run, _ = smoke_run
    assert mt.find_run(client, run.info.run_id).info.run_id == run.info.run_id
    assert mt.find_run(client, config_hash(cfg)[:12]).info.run_id == run.info.run_id
    with pytest.raises(LookupError):
        mt.find_run(client, "abcdef123456")
    with pytest.raises(ValueError, match="config hash prefix"):
        mt.find_run(client, "xyz")


def test_a_run_that_raises_ends_failed(run_root):
    cfg = compose_train(run_root, [*FAST, "eval.split=nope"])  # fails after fit, in the final evaluation
    with pytest.raises(ValueError, match="split must be one of"):
        train(cfg)
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    assert _only_run(client).info.status == "FAILED"


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    assert mt.tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mt.tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    assert mt.tracking_uri("sqlite:////x/y.db", tmp_path) == "sqlite:////x/y.db"
    assert mt.artifact_location("http://127.0.0.1:5000", tmp_path) is None


@pytest.mark.parametrize("fmt", ["png", "nifti"])
def test_sample_command_writes_marked_reproducible_files(smoke_run, tmp_path, fmt):
    import nibabel as nib
    from PIL import Image

    from synthmed.sample import sample

    cfg, _, _, run, root = smoke_run
    common = [f"run={config_hash(cfg)[:12]}", "n=5", f"format={fmt}", "seed=3"]
    a = sample(compose_train(root, [*common, f"out={tmp_path}/a", "batch_size=5"], config_name="sample"))
    b = sample(compose_train(root, [*common, f"out={tmp_path}/b", "batch_size=2"], config_name="sample"))
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 5
    for pa, pb in zip(a, b):
        side = json.loads(pa.with_name(pa.name.split(".")[0] + ".json").read_text())
        assert side["run_id"] == run.info.run_id and side["config_hash"] == config_hash(cfg)
        assert side["seed"] == 3 and side["model_family"] == "diffusion"
        if fmt == "png":
            img = Image.open(pa)
            assert img.text["synthmed:synthetic"] and img.size == (16, 16)
            va, vb = torch.tensor(list(img.getdata())), torch.tensor(list(Image.open(pb).getdata()))
        else:
            nii = nib.load(pa)
            assert nii.header["descrip"].tobytes().startswith(b"SYNTHETIC")
            va, vb = torch.as_tensor(nii.get_fdata()), torch.as_tensor(nib.load(pb).get_fdata())
        # sample i depends only on (seed, i), not on how many were drawn per pass
        assert torch.allclose(va.float(), vb.float(), atol=1.0)


def test_sample_refuses_png_for_volumes_and_unknown_formats(smoke_run, tmp_path):
    from synthmed.sample import sample

    cfg, _, _, _, root = smoke_run
    with pytest.raises(ValueError, match="format must be one of"):
        sample(compose_train(root, [f"run={config_hash(cfg)[:12]}", "format=jpeg", f"out={tmp_path}"],
                             config_name="sample"))


def test_two_runs_in_one_process_log_to_their_own_roots(tmp_path, mlflow_template):
    import shutil

    roots = [tmp_path / "one", tmp_path / "two"]
    for root in roots:
        root.mkdir()
        shutil.copy(mlflow_template, root / "mlflow.db")
        train(compose_train(root, [*FAST, "trainer.max_steps=1", "trainer.val_check_interval=1", "eval.n_samples=2"]))
    for root in roots:
        assert _only_run(MlflowClient(f"sqlite:///{root}/mlflow.db")).info.status == "FINISHED"


@pytest.mark.parametrize("child", [False, True])
def test_evaluate_command_scores_a_run_with_the_full_suite(smoke_run, child):
    from synthmed.evaluate import evaluate

    cfg, _, client, run, root = smoke_run
    ev = evaluate(compose_train(root, [f"run={run.info.run_id}", "n_samples=12", f"child_run={child}",
                                       "metrics.kid_subset_size=4", "metrics.domain_steps=20"], config_name="evaluate"))
    values = ev.result.values
    assert {names.MS_SSIM_DIVERSITY, names.MEMORIZATION_RATE, names.FD_DOMAIN} <= set(values)
    assert names.FID not in values and "fid.skipped" in ev.result.tags  # no Inception weights in tests
    assert len(ev.fake) == 12
    runs = client.search_runs([run.info.experiment_id])
    target = next(r for r in runs if r.info.run_id != run.info.run_id) if child else client.get_run(run.info.run_id)
    if child:
        assert target.data.tags["mlflow.parentRunId"] == run.info.run_id and target.info.status == "FINISHED"
    local = client.download_artifacts(target.info.run_id, "metrics/eval.json", str(root / f"dl_eval_{child}"))
    recorded = json.loads(open(local).read())
    assert recorded["n_samples"] == 12 and recorded["step"] == 4 and recorded["seed"] == 1234
    assert recorded["metrics"][names.MEMORIZATION_RATE] == pytest.approx(values[names.MEMORIZATION_RATE])
    pngs = [a.path for a in client.list_artifacts(target.info.run_id, "metrics")]
    assert "metrics/memorization_step_0000004.png" in pngs
