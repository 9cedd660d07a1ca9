"""NiftiDataset on the real volumes nibabel ships and on small files with known content: preprocessing, shapes,
range, orientation, slicing, manifests, splits, fingerprint, caching, augmentation and the conf/dataset YAML."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from synthmed.config import instantiate
from synthmed.data.datamodule import GenerativeDataModule
from synthmed.data.nifti import NiftiDataset
from synthmed.data.splits import assign_splits
from tests.conftest import compose_train

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
ID_PATTERN = re.compile(r"^nifti-(train|val|test)-\d{5}(-s\d{4})?$")


def copies(src: Path, folder: Path, n: int) -> Path:
    """`n` copies of one real file: enough files for three non-empty splits."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copy(src, folder / f"vol{i}{''.join(src.suffixes)}")
    return folder


def gradient_volume(path: Path, affine: np.ndarray, shape=(8, 6, 4)) -> None:
    """HU = 100 * (index along array axis 0): the direction of increase reveals the orientation after loading."""
    data = np.broadcast_to(100.0 * np.arange(shape[0])[:, None, None], shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), path)


@pytest.fixture(scope="module")
def anatomical(tmp_path_factory) -> Path:
    return copies(NIB_DATA / "anatomical.nii", tmp_path_factory.mktemp("anat"), 5)


def test_anatomical_loads_to_ras_in_range_with_shared_fingerprint(anatomical):
    # anatomical.nii is LAS, int16, 33x41x25 at 2 mm.
    splits = {s: NiftiDataset(s, anatomical, size=[32, 32, 32]) for s in ("train", "val", "test")}
    train = splits["train"]
    assert (train.spatial_dims, train.channels) == (3, 1)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    item = train[0]
    assert item["image"].shape == (1, 32, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() == -1.0 and item["image"].max() == 1.0  # percentile scaling, clipped
    assert ID_PATTERN.match(item["id"]) and "label" not in item
    affine = np.asarray(train.geometry["affine"])
    assert np.allclose(np.diag(affine)[:3], [2.0, 2.0, 2.0])  # RAS: positive diagonal, native 2 mm kept
    assert nib.aff2axcodes(affine) == ("R", "A", "S") and train.geometry["shape"] == [32, 32, 32]
    assert len({d.fingerprint for d in splits.values()}) == 1 and re.fullmatch(r"[0-9a-f]{64}", train.fingerprint)
    assert train.intensity["kind"] == "percentile" and train.intensity["native_max"] > train.intensity["native_min"]


def test_orientation_resampling_and_ct_window_on_a_non_ras_file(tmp_path):
    # Array axis 0 runs toward Left (affine x-step -1) and axis 1/2 are swapped: LSA. After RAS reorientation the
    # first axis runs toward Right, so HU must *decrease* along it; HU maps linearly through the CT window.
    lsa = np.array([[-1.0, 0, 0, 10], [0, 0, 2.0, -5], [0, 3.0, 0, 7], [0, 0, 0, 1]])
    for i in range(3):
        gradient_volume(tmp_path / f"v{i}.nii.gz", lsa)
    ct = {"mode": "ct", "window": [-1000, 1000]}
    ds = NiftiDataset("train", tmp_path, size=[8, 4, 6], intensity=ct)
    img = ds[0]["image"][0]
    assert img.shape == (8, 4, 6) and ds.geometry["spacing"] == [1.0, 2.0, 3.0]
    expected = (100.0 * np.arange(8)[::-1]) / 1000.0  # HU / 1000 for the symmetric +-1000 window
    assert np.allclose(img[:, 0, 0].numpy(), expected, atol=1e-6)
    assert ds.intensity == {"kind": "window", "native_min": -1000.0, "native_max": 1000.0, "unit": "HU"}
    resampled = NiftiDataset("train", tmp_path, size=[4, 4, 4], spacing=[2.0, 2.0, 2.0], intensity=ct)
    assert resampled.geometry["spacing"] == [2.0, 2.0, 2.0] and resampled[0]["image"].shape == (1, 4, 4, 4)
    assert resampled.fingerprint != ds.fingerprint  # preprocessing settings are part of it


def test_example4d_needs_volume_index(tmp_path):
    folder = copies(NIB_DATA / "example4d.nii.gz", tmp_path, 3)
    with pytest.raises(ValueError, match="set volume_index"):
        NiftiDataset("train", folder, size=[16, 16, 8])
    first = NiftiDataset("train", folder, size=[16, 16, 8], volume_index=0)
    second = NiftiDataset("train", folder, size=[16, 16, 8], volume_index=1)
    assert first[0]["image"].shape == (1, 16, 16, 8)
    assert not torch.equal(first[0]["image"], second[0]["image"])
    assert abs(np.linalg.det(np.asarray(first.geometry["affine"])[:3, :3])) > 0
    with pytest.raises(ValueError, match="only 2 volume"):
        NiftiDataset("train", folder, size=[16, 16, 8], volume_index=2)


def test_2d_slices_range_skip_empty_and_geometry(anatomical):
    full = NiftiDataset("val", anatomical, spatial_dims=2, size=[32, 40], cache="memory")
    assert len(full) == 25 and full[0]["image"].shape == (1, 32, 40)  # every axial slice of one volume
    assert re.fullmatch(r"nifti-val-00000-s0000", full[0]["id"])
    assert full.geometry["shape"] == [32, 40, 25] and full.geometry["slice_axis"] == 2
    middle = NiftiDataset("val", anatomical, spatial_dims=2, size=[32, 40], slice_range=[0.2, 0.8])
    assert len(middle) == 15
    sagittal = NiftiDataset("val", anatomical, spatial_dims=2, size=[40, 24], slice_axis=0, cache="memory")
    assert len(sagittal) == 33 and sagittal[0]["image"].shape == (1, 40, 24)


def test_skip_empty_drops_background_slices(tmp_path):
    # Axial slices z < 4 are background (0), z >= 4 tissue: percentile scaling sends background to -1.
    data = np.zeros((12, 12, 10), np.float32)
    data[..., 4:] = np.random.default_rng(0).uniform(100, 200, (12, 12, 6))
    for i in range(3):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"v{i}.nii")
    kw = dict(spatial_dims=2, size=[12, 12], cache="memory")
    assert len(NiftiDataset("train", tmp_path, **kw)) == 10
    kept = NiftiDataset("train", tmp_path, skip_empty=0.5, **kw)
    assert len(kept) == 6 and [kept[i]["id"][-5:] for i in range(6)] == [f"s{z:04d}" for z in range(4, 10)]
    with pytest.raises(ValueError, match="no slice"):
        NiftiDataset("train", tmp_path, slice_range=[0.0, 0.3], skip_empty=0.5, **kw)


def test_manifest_labels_attrs_and_split_column(tmp_path, anatomical):
    rows = ["image,label,age,sex,split"]
    for i, (label, split) in enumerate([("tumor", "train"), ("healthy", "train"), ("tumor", "val"),
                                        ("healthy", "test")]):
        rows.append(f"{anatomical / f'vol{i}.nii'},{label},{40 + i},{i % 2},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    ds = NiftiDataset("train", tmp_path / "m.csv", size=[16, 16, 16], attr_columns=["age", "sex"])
    assert len(ds) == 2 and ds.classes == ["healthy", "tumor"]
    assert [ds[i]["label"] for i in range(2)] == [1, 0]
    assert ds[0]["attrs"] == {"age": 40, "sex": 0} and ds[1]["attrs"] == {"age": 41, "sex": 1}
    assert str(anatomical) not in repr(ds[0]) and ID_PATTERN.match(ds[0]["id"])  # no path travels in an item
    assert len(NiftiDataset("test", tmp_path / "m.csv", size=[16, 16, 16])) == 1
    with pytest.raises(ValueError, match="no column 'weight'"):
        NiftiDataset("train", tmp_path / "m.csv", size=[16, 16, 16], attr_columns=["weight"])


def test_seeded_splits_are_deterministic_and_never_empty():
    for n in range(3, 30):
        names = assign_splits(n, 0.1, 0.1, seed=0)
        assert names == assign_splits(n, 0.1, 0.1, seed=0)
        assert {names.count(s) > 0 for s in ("train", "val", "test")} == {True}
    assert assign_splits(20, 0.1, 0.1, seed=0) != assign_splits(20, 0.1, 0.1, seed=1)
    with pytest.raises(ValueError, match="need at least 3"):
        assign_splits(2, 0.1, 0.1, seed=0)


def test_fingerprint_follows_files_not_splits(tmp_path, anatomical):
    folder = copies(NIB_DATA / "anatomical.nii", tmp_path / "d", 3)
    before = NiftiDataset("train", folder, size=[8, 8, 8]).fingerprint
    assert NiftiDataset("test", folder, size=[8, 8, 8]).fingerprint == before
    (folder / "vol0.nii").write_bytes((NIB_DATA / "anatomical.nii").read_bytes()[:-2] + b"\0\0")
    assert NiftiDataset("train", folder, size=[8, 8, 8]).fingerprint != before


def test_memory_and_disk_cache_give_the_same_items(tmp_path, anatomical):
    plain = NiftiDataset("train", anatomical, size=[16, 16, 16])
    memory = NiftiDataset("train", anatomical, size=[16, 16, 16], cache="memory")
    disk = NiftiDataset("train", anatomical, size=[16, 16, 16], cache="disk", cache_dir=tmp_path / "c")
    for i in range(len(plain)):
        assert torch.equal(plain[i]["image"], memory[i]["image"]) and torch.equal(plain[i]["image"], disk[i]["image"])
    assert any((tmp_path / "c").rglob("*.pt")) and any((tmp_path / "c").glob("preflight-*.json"))
    with pytest.raises(ValueError, match="cache_dir"):
        NiftiDataset("train", anatomical, size=[16, 16, 16], cache="disk")


def test_augmentation_is_seeded_and_train_only(anatomical):
    aug = {"prob": 1.0, "flip_axes": [0], "rotate_deg": 10, "scale": 0.1, "noise_std": 0.05,
           "intensity_shift": 0.1, "intensity_scale": 0.1}
    kw = dict(size=[16, 16, 16], augment=aug, cache="memory")
    a, b = NiftiDataset("train", anatomical, seed=3, **kw), NiftiDataset("train", anatomical, seed=3, **kw)
    c = NiftiDataset("train", anatomical, seed=4, **kw)
    xa, xb, xc = a[0]["image"], b[0]["image"], c[0]["image"]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert xa.min() >= -1.0 and xa.max() <= 1.0
    assert not torch.equal(xa, a[0]["image"])  # a fresh draw each access
    val = NiftiDataset("val", anatomical, seed=3, **kw)
    assert torch.equal(val[0]["image"], val[0]["image"])
    with pytest.raises(ValueError, match="unknown key"):
        NiftiDataset("train", anatomical, size=[16, 16, 16], augment={"elastic": 1})


def test_loader_workers_draw_different_reproducible_augmentations(tmp_path):
    # Each worker reseeds from torch's per-worker seed: workers differ, and a fixed global seed repeats the epoch.
    data = np.random.default_rng(0).uniform(0, 100, (8, 8, 4)).astype(np.float32)
    for i in range(4):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"v{i}.nii")
    ds = NiftiDataset("train", tmp_path, size=[8, 8, 4], val_fraction=0.25, test_fraction=0.25, cache="memory",
                      augment={"prob": 1.0, "noise_std": 0.1})  # two copies of one volume in train

    def epoch():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork")
        return [b["image"] for b in loader]

    first, again = epoch(), epoch()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # worker 0 and worker 1 drew different noise for equal inputs


def test_argument_errors_name_the_argument(anatomical):
    for kwargs, key in [({"size": [16, 16]}, "size"), ({"spacing": [1, 0, 1]}, "spacing"),
                        ({"intensity": {"mode": "pet"}}, "intensity.mode"), ({"on_bad": "ignore"}, "on_bad"),
                        ({"cache": "ram"}, "cache"), ({"channels": 3}, "channels"),
                        ({"spatial_dims": 4}, "spatial_dims"), ({"slice_axis": 3, "spatial_dims": 2, "size": [8, 8]}, "slice_axis")]:
        with pytest.raises(ValueError, match=key):
            NiftiDataset("train", anatomical, **{"size": [16, 16, 16], **kwargs})
    with pytest.raises(ValueError, match="split"):
        NiftiDataset("training", anatomical, size=[16, 16, 16])


def test_conf_yaml_builds_through_the_datamodule(tmp_path, anatomical):
    cfg = compose_train(tmp_path, ["dataset=nifti", f"dataset.datamodule.dataset.root={anatomical}",
                                   "dataset.size=[16,16,16]", "dataset.datamodule.batch_size=2"])
    dm = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    assert isinstance(dm, GenerativeDataModule)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, *cfg.dataset.image_shape) and len(batch["id"]) == 2
    assert dm.fingerprint == dm.split("val").fingerprint and dm.intensity["kind"] == "percentile"
