"""Translation (issue 7): metrics in HU inside a body mask, paired NIfTI data, the translator contract beyond the
generic one, a smoke training run with its val metrics in MLflow, and `synthmed translate` with marked outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from synthmed.config import instantiate
from synthmed.data import export
from synthmed.data.paired_nifti import PairedDataModule, PairedNiftiDataset, match_folders
from synthmed.data.phantom import PhantomDataset
from synthmed.data.preflight import BadDataError
from synthmed.evaluation.step import evaluate_generation, source_request
from synthmed.metrics import names
from synthmed.metrics.suite import MetricSuite
from synthmed.metrics.translation import body_mask, translation_metrics
from tests.conftest import compose_train

HU = {"kind": "linear", "native_min": -1000.0, "native_max": 1000.0, "unit": "HU"}
TINY = ["model=pix2pix", "dataset=phantom2d_pairs", "debug=smoke", "model.generator.features=[8,8,8,16,16,8]",
        "model.generator.norm=[group,{num_groups:4}]", "model.discriminator.channels=8"]


# ---- metrics -----------------------------------------------------------------------------------------------------

def head(size: int = 24) -> torch.Tensor:
    """A disc of 40 HU (0.04 in [-1, 1]) in air (-1000 HU), `[1, 1, size, size]`."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    return torch.where(inside, 0.04, -1.0)[None, None].float()


def test_translation_metrics_are_in_hu_inside_the_body_mask():
    target = head()
    pred = target.clone()
    mask = body_mask(target * 1000.0, HU, dilate=0)
    pred[mask] += 0.01  # +10 HU inside the body ...
    pred[~mask] = -0.5  # ... and 500 HU off in the air, which the (undilated) mask ignores
    values = translation_metrics(pred, target, None, HU, dilate=0)
    assert values[names.MAE_HU] == pytest.approx(10.0, abs=1e-3)
    assert values[names.PSNR_HU] == pytest.approx(10 * np.log10(2000.0 ** 2 / 10.0 ** 2), abs=1e-3)
    assert names.MAE_HU_IDENTITY not in values
    perfect = translation_metrics(target, target, target, HU)
    assert perfect[names.SSIM_HU] == pytest.approx(1.0, abs=1e-4) and perfect[names.MAE_HU_IDENTITY] == 0.0


def test_body_mask_threshold_and_dilation():
    target_hu = head() * 1000.0
    plain = body_mask(target_hu, HU, dilate=0)
    assert torch.equal(plain, target_hu > -500.0)
    grown = body_mask(target_hu, HU, dilate=2)
    assert grown.sum() > plain.sum() and bool((grown | plain).eq(grown).all())  # a superset
    mr = {"kind": "percentile", "native_min": 0.0, "native_max": 200.0, "unit": "a.u."}  # default: 5 % of range
    assert torch.equal(body_mask(torch.tensor([[[[9.0, 11.0]]]]), mr, dilate=0), torch.tensor([[[[False, True]]]]))
    with pytest.raises(ValueError, match="dilate"):
        body_mask(target_hu, HU, dilate=-1)


def test_identity_baseline_reads_the_source_through_the_target_mapping():
    target = head()
    values = translation_metrics(target, target, torch.full_like(target, 0.1), HU, dilate=0)
    assert values[names.MAE_HU_IDENTITY] == pytest.approx(60.0, abs=1e-3)  # 100 HU - 40 HU in the disc
    with pytest.raises(ValueError, match="pred/target"):
        translation_metrics(target[..., :20], target, None, HU)


# ---- paired NIfTI ------------------------------------------------------------------------------------------------

def write_pairs(root, n: int = 5, shape=(12, 12, 8)) -> None:
    """n subjects: MR (a.u., a bright cube) and CT (HU, the same cube at 500 HU in -1000 HU air) on one grid."""
    for side in ("mr", "ct"):
        (root / side).mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    for i in range(n):
        cube = np.zeros(shape, np.float32)
        cube[3:9, 3:9, 2:6] = 1.0
        mr = cube * (100.0 + 10 * i) + np.random.default_rng(i).uniform(0, 5, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(mr, affine), root / "mr" / f"sub{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.where(cube > 0, 500.0, -1000.0).astype(np.float32), affine),
                 root / "ct" / f"sub{i}.nii")  # the other suffix: pairs match by name without it


def paired(root, split: str = "train", **kwargs) -> PairedNiftiDataset:
    args = dict(source_dir="mr", target_dir="ct", size=[12, 12, 8], val_fraction=0.2, test_fraction=0.2)
    return PairedNiftiDataset(split, root, **{**args, **kwargs})


def test_paired_nifti_folders_give_aligned_source_and_target(tmp_path):
    write_pairs(tmp_path)
    ds = paired(tmp_path)
    item = ds[0]
    assert item["image"].shape == item["target"].shape == (1, 12, 12, 8)
    assert item["id"].startswith("paired_nifti-train-") and "sub" not in item["id"]
    assert ds.intensity["kind"] == "percentile"
    assert ds.target_intensity == {"kind": "window", "native_min": -1000.0, "native_max": 1000.0, "unit": "HU"}
    cube = item["target"] > 0  # 500 HU -> 0.5; air -> -1
    assert torch.allclose(item["target"][cube], torch.tensor(0.5)) and (item["target"][~cube] == -1).all()
    assert (item["image"][cube] > item["image"][~cube].max()).all()  # the same cube, bright on MR
    assert [len(paired(tmp_path, s)) for s in ("train", "val", "test")] == [3, 1, 1]
    slices = paired(tmp_path, spatial_dims=2, size=[12, 12], skip_empty=None)
    assert len(slices) == 3 * 8 and slices[0]["image"].shape == slices[0]["target"].shape == (1, 12, 12)


def test_paired_nifti_manifest_and_datamodule(tmp_path):
    write_pairs(tmp_path)
    rows = ["source,target,split"] + [f"mr/sub{i}.nii.gz,ct/sub{i}.nii,{'train' if i < 3 else 'val'}"
                                      for i in range(4)]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    dm = PairedDataModule(lambda split: paired(tmp_path / "pairs.csv", split), batch_size=2)
    assert len(dm.split("train")) == 3 and len(dm.split("val")) == 1
    torch.testing.assert_close(dm.images("val"), dm.split("val")[0]["target"][None])  # references = targets
    torch.testing.assert_close(dm.sources("val"), dm.split("val")[0]["image"][None])
    assert dm.target_intensity["unit"] == "HU" and dm.intensity["kind"] == "percentile"


def test_paired_nifti_yaml_builds_the_datamodule(tmp_path):
    write_pairs(tmp_path / "data")
    data = "dataset.datamodule.dataset"
    cfg = compose_train(tmp_path, ["dataset=paired_nifti", f"{data}.root={tmp_path / 'data'}", f"{data}.source_dir=mr",
                                   f"{data}.target_dir=ct", "dataset.size=[12,12,8]", f"{data}.val_fraction=0.2",
                                   f"{data}.test_fraction=0.2"])
    dm = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    assert isinstance(dm, PairedDataModule) and dm.images("train").shape == (3, 1, 12, 12, 8)
    assert dm.target_intensity["unit"] == "HU" and not torch.equal(dm.images("val"), dm.sources("val"))


def test_paired_nifti_refuses_unmatched_names_and_grids(tmp_path):
    write_pairs(tmp_path)
    (tmp_path / "mr" / "extra.nii.gz").write_bytes((tmp_path / "mr" / "sub0.nii.gz").read_bytes())
    with pytest.raises(ValueError, match="extra"):
        match_folders(tmp_path / "mr", tmp_path / "ct")
    (tmp_path / "mr" / "extra.nii.gz").unlink()
    data = np.array(nib.load(tmp_path / "ct" / "sub1.nii").dataobj)  # a copy: the .nii is memory-mapped
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0])), tmp_path / "ct" / "sub1.nii")
    with pytest.raises(BadDataError, match=r"sub1\.nii: grid differs"):
        paired(tmp_path)


# ---- the translator contract beyond tests/test_contract.py -------------------------------------------------------

@pytest.fixture(scope="module")
def pix2pix_smoke(tmp_path_factory):
    cfg = compose_train(tmp_path_factory.mktemp("p2p"), TINY)
    return cfg, instantiate(cfg.dataset.datamodule, "dm"), instantiate(cfg.model, "model")


def test_translator_needs_a_source_of_the_right_shape(pix2pix_smoke):
    _, datamodule, model = pix2pix_smoke
    with pytest.raises(ValueError, match=r"pass cond=\{'source': x\}"):
        model.sample(2)  # never a silent fallback to some split's sources
    with pytest.raises(ValueError, match=r"\[2, 1, 16, 16\]"):
        model.sample(2, cond={"source": torch.zeros(2, 1, 8, 8)})
    request = source_request(model, datamodule, 3)  # what the callbacks and `synthmed evaluate` pass
    x = model.sample(3, generator=torch.Generator().manual_seed(0), cond=request)
    torch.testing.assert_close(x, model.sample(3, cond={"source": datamodule.sources("val", 3)}))
    shard = model.sample(2, generator=torch.Generator().manual_seed(0), cond={"source": request["source"][1:]},
                         offset=1)
    torch.testing.assert_close(shard, x[1:])  # shards take val items offset + i


def test_final_evaluation_scores_translations_against_their_own_targets(pix2pix_smoke, monkeypatch):
    _, datamodule, model = pix2pix_smoke
    suite = MetricSuite(metrics=["ms_ssim_diversity"], domain_steps=5)  # the lesion reader: its plumbing only
    val = datamodule.split("val")
    n = len(val) + 3  # more samples than val items: sample i translates item i mod len(val)
    oracle = torch.stack([val[i % len(val)]["target"] for i in range(n)])
    monkeypatch.setattr(model, "sample", lambda n, generator=None, cond=None: oracle[:n])  # a perfect translator
    values = evaluate_generation(model, datamodule, suite, n, seed=0, translation=True).result.values
    assert values[names.MAE_HU] == 0.0 and values[names.SSIM_HU] == pytest.approx(1.0)
    # Its lesion rates are the reader's own on the real targets, over each distinct input once.
    assert values[names.LESION_N_POSITIVE] + values[names.LESION_N_NEGATIVE] == len(val)
    for key in (names.LESION_PRESERVED_RATE, names.LESION_APPEARED_RATE):
        assert values[key] == values[names.on_real(key)], key
    # the identity baseline, by hand: the sources read as HU against the targets in HU inside the body mask
    source = torch.stack([val[i % len(val)]["image"] for i in range(n)])
    hu = lambda x: (x.double() + 1) / 2 * 2000 - 1000  # noqa: E731 - the HU window [-1000, 1000]
    mask = body_mask(hu(oracle), HU, None, 2)
    per_image = [((hu(source[i]) - hu(oracle[i])).abs()[mask[i]]).mean().item() for i in range(n)]
    assert values[names.MAE_HU_IDENTITY] == pytest.approx(float(np.mean(per_image)), rel=1e-5)
    shifted = torch.roll(oracle, 1, dims=0)  # a translator paired with the wrong targets is not perfect
    monkeypatch.setattr(model, "sample", lambda n, generator=None, cond=None: shifted[:n])
    assert evaluate_generation(model, datamodule, suite, n, seed=0, translation=True).result.values[names.MAE_HU] > 10
    periodic = evaluate_generation(model, datamodule, suite, n, seed=0).result.values  # left to validation_step
    assert names.MAE_HU not in periodic


def test_pix2pix_and_cond_ddpm_check_their_arguments(tmp_path):
    for override, match in (("model.lambda_l1=-1", "lambda_l1"), ("model.mask_dilate=-1", "mask_dilate"),
                            ("model.loss=wasserstein", "loss")):
        with pytest.raises(Exception, match=match):
            instantiate(compose_train(tmp_path, ["model=pix2pix", "debug=smoke", override]).model, "model")
    cfg = compose_train(tmp_path, ["model=cond_ddpm", "debug=smoke", "model.net.out_channels=2"])
    with pytest.raises(Exception, match="out_channels"):
        instantiate(cfg.model, "model")


# ---- train -> MLflow -> translate --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template):
    from synthmed.train import train

    root = tmp_path_factory.mktemp("translate_root")
    shutil.copy(mlflow_template, root / "mlflow.db")
    cfg = compose_train(root, [*TINY, "trainer.max_steps=2", "callbacks.generation_metrics.n_samples=2",
                               "eval.metrics=[ms_ssim_diversity]", "eval.n_samples=2"])
    train(cfg)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    return root, client, run


def test_val_translation_metrics_land_in_mlflow(trained):
    _, client, run = trained
    for key in (names.MAE_HU, names.PSNR_HU, names.SSIM_HU, names.MAE_HU_IDENTITY, names.TRAIN_LOSS_G):
        assert key in run.data.metrics, key
    assert 100.0 < run.data.metrics[names.MAE_HU_IDENTITY] < 400.0  # HU, not [-1, 1] units
    assert run.info.run_name.startswith("pix2pix-phantom2d_pairs-") and run.data.tags["synthmed.model_family"] == "gan"


def test_final_json_holds_the_hu_metrics(trained):
    _, client, run = trained
    final = json.loads(Path(client.download_artifacts(run.info.run_id, "metrics/final.json")).read_text())
    for key in (names.MAE_HU, names.PSNR_HU, names.SSIM_HU, names.MAE_HU_IDENTITY):
        assert np.isfinite(final["metrics"][key]), key
    assert 100.0 < final["metrics"][names.MAE_HU_IDENTITY] < 400.0  # HU, as during validation
    history = client.get_metric_history(run.info.run_id, names.MAE_HU)
    assert history[-1].value == pytest.approx(final["metrics"][names.MAE_HU]) and history[-1].step == final["step"]


def test_final_record_holds_the_lesion_rates_with_n_and_interval(trained):
    """The phantom's CTs carry lesion labels, so the final evaluation trains a CT lesion reader and reads the
    translations of the 2 scored val MRs (tests/test_unpaired.py checks what the rates mean)."""
    _, client, run = trained
    final = json.loads(Path(client.download_artifacts(run.info.run_id, "metrics/final.json")).read_text())["metrics"]
    assert final[names.LESION_N_POSITIVE] + final[names.LESION_N_NEGATIVE] == 2  # eval.n_samples distinct inputs
    for key, n_key in ((names.LESION_PRESERVED_RATE, names.LESION_N_POSITIVE),
                       (names.LESION_APPEARED_RATE, names.LESION_N_NEGATIVE)):
        if final[n_key]:
            assert final[names.ci_low(key)] <= final[key] <= final[names.ci_high(key)], key
            assert (final[key] * final[n_key]) == pytest.approx(round(final[key] * final[n_key]))  # k of n
        for logged in (key, names.ci_low(key), n_key, names.on_real(key)):
            history = client.get_metric_history(run.info.run_id, logged)
            assert history[-1].step == 2 and history[-1].value == pytest.approx(final[logged], nan_ok=True), logged
    assert "lesion_reader.weights_sha256" in {k.removeprefix("synthmed.") for k in run.data.tags}


def test_evaluate_reads_the_lesion_rates_of_a_translator_run(trained, capsys):
    from synthmed.evaluate import evaluate

    root, client, run = trained
    ev = evaluate(compose_train(root, [f"run={run.info.run_id}", "n_samples=4", "child_run=true",
                                       "metrics.metrics=[ms_ssim_diversity]", "metrics.domain_steps=20"],
                                config_name="evaluate"))
    values = ev.result.values
    assert values[names.LESION_N_POSITIVE] + values[names.LESION_N_NEGATIVE] == 4
    assert {names.ci_high(names.LESION_APPEARED_RATE), names.on_real(names.LESION_APPEARED_RATE)} <= set(values)
    printed = json.loads(capsys.readouterr().out)  # stdout stays one JSON document
    assert printed["metrics"][names.LESION_N_NEGATIVE] == values[names.LESION_N_NEGATIVE]


def test_translate_writes_marked_outputs_without_input_headers(trained, tmp_path):
    from synthmed.translate import translate

    root, _, run = trained
    src = tmp_path / "in"
    src.mkdir()
    phantom = PhantomDataset("test", 2, size=16, n_train=1, n_val=1, n_test=2)
    export.write_png(phantom[0]["image"], src / "a_mr.png", phantom.intensity, {})
    volume = PhantomDataset("test", 3, size=16, n_train=1, n_val=1, n_test=1)[0]["image"][0].numpy()
    img = nib.Nifti1Image((volume + 1.0) * 0.5, np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header["descrip"], img.header["db_name"] = b"PATIENT^SECRET 1970", b"SECRETDB"
    nib.save(img, src / "b_mr.nii.gz")
    cfg = compose_train(root, [f"run={run.info.run_id}", f"in={src}", f"out={tmp_path / 'out'}"],
                        config_name="translate")
    png, nifti = translate(cfg)

    assert png.name == "translation_000000.png" and Image.open(png).text[export.SYNTHETIC_KEY] == "true"
    out = nib.load(nifti)
    assert out.shape == (16, 16, 16)  # a 2D model translated the volume slice by slice
    assert out.header["descrip"].tobytes().startswith(b"SYNTHETIC") and b"SECRET" not in nifti.read_bytes()
    hu = out.get_fdata()
    assert -1000.0 <= hu.min() and hu.max() <= 1000.0  # inside the target's window ...
    assert np.ptp(hu) > 2.0  # ... and in HU: outputs left in [-1, 1] units could not spread over more than 2
    side = json.loads(export.sidecar_path(nifti).read_text())
    assert side["input_name"] == "b_mr.nii.gz" and side["sample_index"] == 1 and side["synthetic"] is True
    assert side["run_id"] == run.info.run_id and side["model_family"] == "gan" and "SECRET" not in json.dumps(side)
    again = translate(cfg)  # deterministic: the same files again
    assert np.array_equal(nib.load(again[1]).get_fdata(), out.get_fdata())
