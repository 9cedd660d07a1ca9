"""Config ergonomics (issue 12 item 5): `dataset.root=`, an int `dataset.size`, a derived `image_shape`,
`debug=smoke` over every data set, 2D on volumes with one override; old spellings keep working."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from synthmed.config import CONF_DIR, check_dataset, check_targets, instantiate
from synthmed.tracking.confighash import config_hash
from tests.conftest import compose_train

DATASETS = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
FILE_BASED = [d for d in DATASETS if not d.startswith("phantom") and d != "unpaired"]  # one root each
TWO_ROOTS = ["dataset.source_root={root}/mr", "dataset.target_root={root}/ct"]  # dataset=unpaired


def _smoke(tmp_path, dataset: str, *extra: str):
    root = [] if dataset.startswith("phantom") else [f"dataset.root={tmp_path / 'data'}"]
    if dataset == "unpaired":
        root = [r.format(root=tmp_path / "data") for r in TWO_ROOTS]
    return compose_train(tmp_path, [f"dataset={dataset}", "debug=smoke", *root, *extra])


@pytest.mark.parametrize("dataset", DATASETS)
def test_debug_smoke_composes_for_every_dataset_with_no_extra_key(tmp_path, dataset):
    cfg = _smoke(tmp_path, dataset)
    check_dataset(cfg)
    check_targets(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    dims = resolved["dataset"]["spatial_dims"]
    assert resolved["dataset"]["image_shape"] == [1] + [16] * dims
    assert resolved["model"]["image_shape"] == resolved["dataset"]["image_shape"]
    if dataset in FILE_BASED:  # the data set class gets one int per axis and the short root
        nested = resolved["dataset"]["datamodule"]["dataset"]
        assert nested["size"] == [16] * dims and nested["root"] == str(tmp_path / "data")


@pytest.mark.parametrize("dataset", FILE_BASED)
def test_dataset_root_and_the_old_spelling_are_one_config(tmp_path, dataset):
    short = compose_train(tmp_path, [f"dataset={dataset}", "dataset.root=/data/x"])
    old = compose_train(tmp_path, [f"dataset={dataset}", "dataset.datamodule.dataset.root=/data/x"])
    check_dataset(old)  # the old spelling is not refused although dataset.root stays unset,
    check_targets(old)  # and nothing that walks the whole config trips over the unset short key
    OmegaConf.to_container(old, resolve=True, throw_on_missing=True)
    assert old.dataset.datamodule.dataset.root == short.dataset.datamodule.dataset.root == "/data/x"
    assert config_hash(short) == config_hash(old)
    assert config_hash(short) != config_hash(compose_train(tmp_path, [f"dataset={dataset}", "dataset.root=/data/y"]))


@pytest.mark.parametrize("dataset", FILE_BASED)
def test_a_missing_root_names_dataset_root_before_any_work(tmp_path, dataset):
    with pytest.raises(ValueError, match=rf"dataset={dataset}.*pass dataset\.root="):
        check_dataset(compose_train(tmp_path, [f"dataset={dataset}"]))


def test_unpaired_collections_are_two_short_roots_or_a_manifest(tmp_path):
    with pytest.raises(ValueError, match=r"dataset\.source_root=.*dataset\.target_root"):
        check_dataset(compose_train(tmp_path, ["dataset=unpaired"]))
    with pytest.raises(ValueError, match=r"dataset\.target_root is not set"):
        check_dataset(compose_train(tmp_path, ["dataset=unpaired", "dataset.source_root=/d/mr"]))
    cfg = compose_train(tmp_path, ["dataset=unpaired", *(r.format(root="/d") for r in TWO_ROOTS)])
    check_dataset(cfg)
    nested = cfg.dataset.datamodule.dataset
    assert (nested.source.root, nested.target.root) == ("/d/mr", "/d/ct")
    check_dataset(compose_train(tmp_path, ["dataset=unpaired", "dataset.manifest=/d/all.csv"]))


@pytest.mark.parametrize("overrides,shape", [
    (["dataset=nifti"], [1, 32, 32, 32]),
    (["dataset=nifti", "dataset.size=24"], [1, 24, 24, 24]),
    (["dataset=nifti", "dataset.size=[24,16,8]"], [1, 24, 16, 8]),           # anisotropic: a list per axis
    (["dataset=nifti", "dataset.spatial_dims=2"], [1, 32, 32]),             # 2D on volumes: one override
    (["dataset=dicom", "dataset.spatial_dims=2", "dataset.size=48"], [1, 48, 48]),
    (["dataset=medmnist", "dataset.spatial_dims=3"], [1, 28, 28, 28]),
    (["dataset=image_folder", "dataset.channels=3", "dataset.size=[32,48]"], [3, 32, 48]),
    (["dataset=phantom3d", "dataset.size=16"], [1, 16, 16, 16]),
    # the old spelling: image_shape passed by hand, agreeing with the size
    (["dataset=nifti", "dataset.spatial_dims=2", "dataset.size=[64,64]", "dataset.image_shape=[1,64,64]"],
     [1, 64, 64]),
])
def test_image_shape_is_derived_from_size_and_spatial_dims(tmp_path, overrides, shape):
    cfg = compose_train(tmp_path, [*overrides, "dataset.root=/data/x"] if "phantom" not in overrides[0] else overrides)
    check_dataset(cfg)
    assert list(cfg.dataset.image_shape) == list(cfg.model.image_shape) == shape
    if "phantom" not in overrides[0]:
        assert list(cfg.dataset.datamodule.dataset.size) == shape[1:]


def test_a_size_list_of_the_wrong_length_names_the_key(tmp_path):
    cfg = compose_train(tmp_path, ["dataset=nifti", "dataset.root=/x", "dataset.size=[16,16]"])  # 3D by default
    with pytest.raises(Exception, match=r"dataset\.size=\[16, 16\] has 2 sides but dataset\.spatial_dims=3"):
        check_dataset(cfg)


def test_a_hand_written_image_shape_that_disagrees_is_refused(tmp_path):
    cfg = compose_train(tmp_path, ["dataset=nifti", "dataset.root=/x", "dataset.spatial_dims=2",
                                   "dataset.image_shape=[1,64,64]"])  # size 32: the old spelling half done
    with pytest.raises(ValueError, match=r"dataset\.image_shape=\[1, 64, 64\] disagrees with dataset\.size=32.*"
                                         r"\[1, 32, 32\].*set dataset\.size only"):
        check_dataset(cfg)


def test_phantom_hash_is_unchanged_by_the_derived_image_shape(tmp_path):
    # image_shape resolves to the same list as before (an interpolated [C, size, size]): recorded hashes still match.
    cfg = compose_train(tmp_path)
    assert OmegaConf.to_container(cfg.dataset, resolve=True)["image_shape"] == [1, 64, 64]
    explicit = compose_train(tmp_path, ["dataset.image_shape=[1,64,64]"])
    assert config_hash(cfg) == config_hash(explicit)


def test_2d_slices_of_nifti_volumes_with_one_override(tmp_path):
    # `dataset=nifti dataset.spatial_dims=2 debug=smoke dataset.root=DIR`: batches of [B, 1, 16, 16] slices.
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        vol = np.zeros((20, 20, 10), np.float32)
        vol[4:16, 4:16, :] = rng.uniform(50, 100)
        nib.save(nib.Nifti1Image(vol + rng.normal(0, 1, vol.shape).astype(np.float32), np.eye(4)),
                 folder / f"s{i}.nii.gz")
    cfg = _smoke(tmp_path, "nifti", "dataset.spatial_dims=2")
    check_dataset(cfg)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert tuple(batch["image"].shape) == (4, *cfg.dataset.image_shape) == (4, 1, 16, 16)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
