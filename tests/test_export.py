"""Export round trips: values (inverse intensity mapping within quantization), geometry, transparency marks, no
field copied from a real input, and atomic writes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.data import export
from synthmed.data.export import sidecar_path, write_dicom, write_nifti, write_png, write_sidecar
from synthmed.data.nifti import NiftiDataset

META = {"run_id": "0123456789abcdef0123", "config_hash": "a1b2c3d4e5f6", "seed": 7, "sample_index": 3,
        "model_family": "ddpm"}
CT = {"kind": "window", "native_min": -1000.0, "native_max": 1000.0, "unit": "HU"}
OBLIQUE = [[-0.9, 0.3, 0.0, 40.0], [0.2, 1.4, 0.5, -20.0], [0.0, -0.4, 2.5, 12.0], [0, 0, 0, 1]]


def sample(shape, seed=0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*")]


@pytest.fixture(scope="module")
def real_source(tmp_path_factory) -> Path:
    """Three 'real' CT volumes whose headers carry identifying text in every free field and an extension."""
    folder = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    for i in range(3):
        img = nib.Nifti1Image(rng.uniform(-1000, 1000, (10, 8, 6)).astype(np.float32), np.array(OBLIQUE))
        hdr = img.header
        hdr["descrip"], hdr["db_name"], hdr["aux_file"] = b"DOE^JANE head CT", b"GeneralHospital", b"jane.aux"
        hdr["intent_name"] = b"MRN0042"
        hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", b"patient Jane Doe, born 1970"))
        nib.save(img, folder / f"real{i}.nii.gz")
    return folder


# ---- PNG ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 16])
def test_png_round_trip_exact_at_native_depth(tmp_path, bits):
    levels = 2 ** bits - 1
    native = np.random.default_rng(bits).integers(0, levels + 1, (1, 12, 9))
    x = torch.tensor(native / levels * 2 - 1, dtype=torch.float32)
    path = write_png(x, tmp_path / "s.png", {"kind": "linear", "native_min": 0, "native_max": levels}, META)
    with Image.open(path) as im:
        assert im.mode == ("L" if bits == 8 else "I;16")
        assert np.array_equal(np.asarray(im), native[0])
        assert im.text[export.SYNTHETIC_KEY] == "true" and im.text["Description"].startswith("SYNTHETIC")
        meta = json.loads(im.text[export.META_KEY])
    assert meta["run_id"] == META["run_id"] and meta["bits"] == bits and meta["intensity"]["native_max"] == levels
    assert leftovers(tmp_path) == []


def test_png_rgb_and_ct_display(tmp_path):
    rgb = write_png(sample((3, 5, 4)), tmp_path / "rgb.png", {"kind": "linear", "native_min": 0, "native_max": 255})
    with Image.open(rgb) as im:
        assert im.mode == "RGB" and im.size == (4, 5)
    x = torch.tensor([[[-1.0, 0.0, 1.0]]])
    with Image.open(write_png(x, tmp_path / "ct.png", CT, META)) as im:
        assert im.mode == "L" and np.asarray(im).tolist() == [[0, 128, 255]]  # the window as display range
        assert json.loads(im.text[export.META_KEY])["intensity"]["unit"] == "HU"  # so it can be inverted
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        write_png(sample((1, 4, 4, 4)), tmp_path / "v.png")


# ---- NIfTI -------------------------------------------------------------------------------------------------------

def test_nifti_hu_values_geometry_and_marks(tmp_path):
    x = sample((1, 10, 8, 6))
    path = write_nifti(x, tmp_path / "s.nii.gz", CT, {"affine": OBLIQUE, "spacing": [9, 9, 9]}, META)
    img = nib.load(path)
    assert np.allclose(img.get_fdata(), x[0].numpy() * 1000, atol=1e-3)  # HU
    assert np.allclose(img.affine, OBLIQUE, atol=1e-5) and img.header["sform_code"] == 2
    hdr = img.header
    assert hdr["descrip"].tobytes().startswith(b"SYNTHETIC synthmed run=0123456789abcdef sample=3")
    assert [hdr[f].tobytes().strip(b"\0") for f in ("aux_file", "db_name", "intent_name")] == [b"", b"", b""]
    assert len(hdr.extensions) == 0 and (hdr["cal_min"], hdr["cal_max"]) == (-1000, 1000)
    two_d = nib.load(write_nifti(sample((1, 5, 4)), tmp_path / "s2.nii", CT))
    assert two_d.shape == (5, 4, 1) and np.allclose(two_d.affine, np.eye(4))
    assert leftovers(tmp_path) == []


def test_nifti_from_a_real_dataset_reloads_identically_and_copies_nothing(tmp_path, real_source):
    ds = NiftiDataset("train", real_source, size=[10, 8, 6], intensity={"mode": "ct"})
    out = tmp_path / "out"
    samples = [sample((1, 10, 8, 6), seed=s) for s in range(3)]
    for i, x in enumerate(samples):
        write_nifti(x, out / f"sample_{i:05d}.nii.gz", ds.intensity, ds.geometry, {**META, "sample_index": i})
    exported = nib.load(out / "sample_00000.nii.gz")
    assert np.allclose(exported.affine, ds.geometry["affine"], atol=1e-5)
    raw = b"".join(p.read_bytes() for p in out.iterdir())
    text = b"".join(gzip.decompress(p.read_bytes()) for p in out.iterdir()) + raw
    for secret in (b"DOE", b"Jane", b"GeneralHospital", b"jane.aux", b"MRN0042", b"1970"):
        assert secret not in text
    # The exports are a valid dataset in the same geometry: loading them gives the samples back.
    again = NiftiDataset("train", out, size=[10, 8, 6], intensity={"mode": "ct"}, val_fraction=0.34,
                         test_fraction=0.34)
    got = again[0]["image"]
    assert any(torch.allclose(got, x, atol=1e-5) for x in samples)
    assert np.allclose(again.geometry["affine"], ds.geometry["affine"], atol=1e-5)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(img, filename):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(sample((1, 4, 4, 4)), tmp_path / "s.nii.gz", CT)
    assert list(tmp_path.iterdir()) == []


def test_refuses_nan_and_bad_paths(tmp_path):
    x = sample((1, 4, 4, 4))
    x[0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_nifti(x, tmp_path / "s.nii.gz", CT)
    with pytest.raises(ValueError, match=".nii or .nii.gz"):
        write_nifti(sample((1, 4, 4, 4)), tmp_path / "s.img", CT)


# ---- sidecar -----------------------------------------------------------------------------------------------------

def test_sidecar_holds_provenance(tmp_path):
    assert sidecar_path(tmp_path / "sample_00003.nii.gz") == tmp_path / "sample_00003.json"
    path = write_sidecar(sidecar_path(tmp_path / "sample_00003.png"), {**META, "seed": np.int64(7)})
    doc = json.loads(path.read_text())
    assert doc["synthetic"] is True and doc["notice"].startswith("SYNTHETIC")
    assert {k: doc[k] for k in META} == META
    with pytest.raises(ValueError, match="model_family"):
        write_sidecar(tmp_path / "x.json", {k: v for k, v in META.items() if k != "model_family"})
    assert leftovers(tmp_path) == []


# ---- DICOM -------------------------------------------------------------------------------------------------------

def test_dicom_series_round_trip_marks_and_fresh_uids(tmp_path, real_source):
    pydicom = pytest.importorskip("pydicom")
    from synthmed.data.dicom import DicomDataset

    ds = NiftiDataset("train", real_source, size=[10, 8, 6], intensity={"mode": "ct"})
    samples = [sample((1, 10, 8, 6), seed=s) for s in range(3)]
    for i, x in enumerate(samples):
        write_dicom(x, tmp_path / "dcm" / f"sample_{i:05d}", ds.intensity, ds.geometry, {**META, "sample_index": i})
    files = sorted((tmp_path / "dcm").rglob("*.dcm"))
    assert len(files) == 18 and leftovers(tmp_path) == []
    headers = [pydicom.dcmread(f) for f in files]
    h = headers[0]
    assert list(h.ImageType) == ["DERIVED", "SECONDARY"] and h.SeriesDescription.startswith("SYNTHETIC")
    assert str(h.PatientName) == "SYNTHETIC^SYNTHMED" and h.PatientBirthDate == "" and h.Modality == "CT"
    assert "InstitutionName" not in h and "OtherPatientIDs" not in h
    assert len({x.SOPInstanceUID for x in headers}) == 18 and len({x.SeriesInstanceUID for x in headers}) == 3
    raw = b"".join(f.read_bytes() for f in files)
    assert b"DOE" not in raw and b"Hospital" not in raw
    # Reloaded through the DICOM reader in RAS: same values (HU rounded to integers) and geometry as the dataset.
    back = DicomDataset("train", tmp_path / "dcm", size=[10, 8, 6], intensity={"mode": "ct"}, val_fraction=0.34,
                        test_fraction=0.34)
    assert np.allclose(back.geometry["affine"], ds.geometry["affine"], atol=1e-3)
    assert any(torch.allclose(back[0]["image"], x, atol=0.5e-3 + 1e-6) for x in samples)


def test_dicom_mr_rescale_and_replace(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    mr = {"kind": "percentile", "lower": 0.5, "upper": 99.5, "native_min": 12.0, "native_max": 812.0}
    x = sample((1, 6, 5, 3))
    first = write_dicom(x, tmp_path / "s", mr, None, META)
    uid = pydicom.dcmread(first[0]).SeriesInstanceUID
    files = write_dicom(x, tmp_path / "s", mr, None, META)  # rewriting replaces the whole series
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [p.name for p in files]
    assert pydicom.dcmread(files[0]).SeriesInstanceUID != uid and leftovers(tmp_path) == []
    volume = np.stack([pydicom.dcmread(f).pixel_array * float(pydicom.dcmread(f).RescaleSlope)
                       + float(pydicom.dcmread(f).RescaleIntercept) for f in files], axis=-1)
    expected = 12.0 + (x[0].numpy() + 1) / 2 * 800.0
    assert pydicom.dcmread(files[0]).Modality == "MR"
    assert np.abs(volume - expected).max() <= 800.0 / 65535  # one stored step
    with pytest.raises(ValueError, match="C = 1"):
        write_dicom(sample((3, 4, 4)), tmp_path / "rgb", mr)
