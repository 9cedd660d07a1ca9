"""Pre-flight scan: every kind of bad input is listed with its path and cause before training, under both
policies; skipped files never reach an item; empty folders and missing paths are clear errors."""

from __future__ import annotations

import gzip
import logging
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.data.image_folder import ImageFolderDataset
from synthmed.data.nifti import NiftiDataset
from synthmed.data.preflight import BadDataError

PIXDIM_1 = 80  # byte offset of pixdim[1] (x voxel size, float32) in a NIfTI-1 header
SIZE = [8, 8, 8]


def good_volume(path: Path, seed: int = 0, data: np.ndarray | None = None) -> Path:
    data = np.random.default_rng(seed).uniform(0, 100, (8, 8, 8)).astype(np.float32) if data is None else data
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def patch_float(path: Path, offset: int, value: float) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(raw))


def make_bad_files(folder: Path) -> dict[str, str]:
    """One file per defect; returns {file name: expected words of its cause}."""
    trunc = good_volume(folder / "truncated.nii.gz")
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    good_volume(folder / "plain.nii").rename(folder / "notgzipped.nii.gz")
    (folder / "corrupt.nii").write_bytes(np.random.default_rng(0).bytes(600))
    (folder / "empty.nii").write_bytes(b"")
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), folder / "flat2d.nii")
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((8, 8, 8, 3)).astype(np.float32), np.eye(4)),
             folder / "fourd.nii.gz")
    nan = np.ones((8, 8, 8), np.float32) * np.arange(8)
    nan[1, 2, 3], nan[0, 0, 0] = np.nan, np.inf
    good_volume(folder / "nan.nii", data=nan)
    good_volume(folder / "constant.nii", data=np.full((8, 8, 8), 7.0, np.float32))
    patch_float(good_volume(folder / "zerospacing.nii"), PIXDIM_1, 0.0)
    patch_float(good_volume(folder / "negspacing.nii"), PIXDIM_1 + 4, -2.0)
    return {"truncated.nii.gz": "truncated or corrupt", "notgzipped.nii.gz": "not gzip-compressed",
            "corrupt.nii": "not a readable NIfTI", "empty.nii": "empty file", "flat2d.nii": "wrong dimensionality",
            "fourd.nii.gz": "set volume_index", "nan.nii": "1 NaN and 1 Inf", "constant.nii": "constant image",
            "zerospacing.nii": "voxel spacing (0.0, 1.0, 1.0)", "negspacing.nii": "voxel spacing (1.0, -2.0, 1.0)"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("mixed")
    for i in range(5):
        good_volume(folder / f"good{i}.nii.gz", seed=i)
    return folder, make_bad_files(folder)


def test_fail_lists_every_bad_file_with_path_and_cause(mixed):
    folder, expected = mixed
    with pytest.raises(BadDataError) as info:
        NiftiDataset("train", folder, size=SIZE)
    message = str(info.value)
    assert f"{len(expected)} of {len(expected) + 5} item(s)" in message
    for name, cause in expected.items():
        line = next(line for line in message.splitlines() if line.strip().startswith(str(folder / name)))
        assert cause in line, line
    assert sorted(Path(b.path).name for b in info.value.bad) == sorted(expected)
    assert "suitable reader" not in message and "good" not in message


def test_skip_quarantines_and_every_item_is_finite(mixed, caplog):
    folder, expected = mixed
    with caplog.at_level(logging.WARNING, logger="synthmed.data.preflight"):
        splits = [NiftiDataset(s, folder, size=SIZE, on_bad="skip") for s in ("train", "val", "test")]
    assert f"skipping {len(expected)} of" in caplog.text and "constant.nii" in caplog.text
    assert caplog.text.count("pre-flight: skipping") == 1  # three splits, one warning
    assert sorted(Path(b.path).name for b in splits[0].quarantine) == sorted(expected)
    assert sum(len(d) for d in splits) == 5  # only the good files, spread over the splits
    for ds in splits:
        for i in range(len(ds)):
            x = ds[i]["image"]
            assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1  # no NaN after normalization


def test_splits_are_drawn_over_usable_files(mixed):
    # With on_bad=skip every split still gets a usable file, and no file lands in two splits.
    folder, _ = mixed
    files = {s: [r.source for r in NiftiDataset(s, folder, size=SIZE, on_bad="skip").records]
             for s in ("train", "val", "test")}
    assert [len(files[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert len(set(sum(files.values(), []))) == 5 and all("good" in f for f in sum(files.values(), []))


def test_all_bad_is_an_error_even_with_skip(tmp_path):
    make_bad_files(tmp_path)
    with pytest.raises(BadDataError, match="no usable item"):
        NiftiDataset("train", tmp_path, size=SIZE, on_bad="skip")


def test_near_constant_volume_is_bad_for_percentile_scaling(tmp_path):
    for i in range(3):
        good_volume(tmp_path / f"good{i}.nii", seed=i)
    sparse = np.zeros((8, 8, 8), np.float32)
    sparse[0, 0, 0] = 1.0  # 99.8 % zeros: the 0.5th and 99.5th percentiles coincide
    good_volume(tmp_path / "sparse.nii", data=sparse)
    with pytest.raises(BadDataError, match=r"sparse.nii: near-constant"):
        NiftiDataset("train", tmp_path, size=SIZE)
    ct = NiftiDataset("train", tmp_path, size=SIZE, intensity={"mode": "ct"})  # a fixed window has no such issue
    assert len(ct.quarantine) == 0


def test_manifest_row_with_missing_file(tmp_path):
    for i in range(3):
        good_volume(tmp_path / f"good{i}.nii", seed=i)
    (tmp_path / "m.csv").write_text("image\n" + "".join(f"good{i}.nii\n" for i in range(3)) + "gone.nii\n")
    with pytest.raises(BadDataError, match=r"gone.nii: file not found"):
        NiftiDataset("train", tmp_path / "m.csv", size=SIZE)


def test_empty_folder_and_missing_path_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no .nii/.nii.gz files found under {tmp_path / 'empty'}"):
        NiftiDataset("train", tmp_path / "empty", size=SIZE)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'} does not exist"):
        NiftiDataset("train", tmp_path / "nowhere", size=SIZE)
    with pytest.raises(ValueError, match="root is not set"):
        NiftiDataset("train", "???", size=SIZE)
    with pytest.raises(FileNotFoundError, match="no .png"):
        ImageFolderDataset("train", tmp_path / "empty")


def test_too_few_files_for_three_splits(tmp_path):
    for i in range(2):
        good_volume(tmp_path / f"good{i}.nii", seed=i)
    with pytest.raises(ValueError, match="2 usable file.*need at least 3"):
        NiftiDataset("train", tmp_path, size=SIZE)


def test_bad_images_are_listed(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / f"ok{i}.png")
    full = (tmp_path / "ok0.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    (tmp_path / "random.jpg").write_bytes(rng.bytes(300))
    Image.fromarray(rng.random((16, 16)).astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(BadDataError) as info:
        ImageFolderDataset("train", tmp_path, size=[16, 16])
    causes = {Path(b.path).name: b.cause for b in info.value.bad}
    assert set(causes) == {"truncated.png", "random.jpg", "float.tif"}
    assert "truncated" in causes["truncated.png"] and "unsupported pixel mode 'F'" in causes["float.tif"]
    ok = ImageFolderDataset("train", tmp_path, size=[16, 16], on_bad="skip", val_fraction=0.2, test_fraction=0.2)
    assert all(torch.isfinite(ok[i]["image"]).all() for i in range(len(ok)))


def test_disk_memo_skips_the_rescan(tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(3):
        good_volume(folder / f"good{i}.nii", seed=i)
    NiftiDataset("train", folder, size=SIZE, cache="disk", cache_dir=tmp_path / "c", hash_contents=True)
    from synthmed.data import preflight
    monkeypatch.setattr(preflight, "_MEMO", {})  # a new process: only the disk memo remains
    monkeypatch.setattr(NiftiDataset, "_scan", lambda self, r: pytest.fail("re-scanned"))
    ds = NiftiDataset("val", folder, size=SIZE, cache="disk", cache_dir=tmp_path / "c", hash_contents=True)
    assert len(ds) == 1


def test_gzip_content_under_a_plain_name(tmp_path):
    for i in range(3):
        good_volume(tmp_path / f"good{i}.nii", seed=i)
    (tmp_path / "zipped.nii").write_bytes(gzip.compress((tmp_path / "good0.nii").read_bytes()))
    ds = NiftiDataset("train", tmp_path, size=SIZE, on_bad="skip")
    assert [(os.path.basename(b.path), b.cause[:29]) for b in ds.quarantine] == [
        ("zipped.nii", "gzip-compressed but not named")]
