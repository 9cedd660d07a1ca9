"""DicomDataset on small CT series written with pydicom: HU via rescale, geometry, grouping by SeriesInstanceUID
(sub-folders or one mixed folder), bad series listed, and no header field in an item."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from synthmed.config import instantiate
from synthmed.data.preflight import BadDataError
from tests.conftest import compose_train

pydicom = pytest.importorskip("pydicom")
from synthmed.data.dicom import DicomDataset  # noqa: E402  (after the importorskip)

ROWS, COLS, SLICES = 8, 6, 4
CT = {"mode": "ct", "window": [-1000, 1000]}


def real_series(folder, n=SLICES, offset=0, name="S", instance_numbers=True, positions=None):
    """A CT series with a patient identity, as a scanner would write it: HU = 100 * slice + offset (stored + 1024
    with RescaleIntercept -1024), axial, 0.7 x 0.8 mm pixels, 2.5 mm slices."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for k in range(n):
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JANE", "MRN-0042", "19700101"
        ds.InstitutionName, ds.StudyInstanceUID, ds.SeriesInstanceUID = "General Hospital", study_uid, series_uid
        ds.Modality, ds.SeriesDescription = "CT", "HEAD W/O"
        if instance_numbers:
            ds.InstanceNumber = k + 1
        z = positions[k] if positions else 2.5 * k
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, z], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.8], 2.5
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLS, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        pixels = np.full((ROWS, COLS), 1024 + 100 * k + offset, np.uint16)
        pixels[0, 0] += 1  # not constant within a slice
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"{name}{k:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    for s in range(3):
        real_series(root / f"patient{s}" / "series1", offset=10 * s)
    return root


def test_series_load_in_hu_and_ras(ct_root):
    splits = {s: DicomDataset(s, ct_root, size=[COLS, ROWS, SLICES], intensity=CT) for s in ("train", "val", "test")}
    ds = splits["train"]
    assert [len(d) for d in splits.values()] == [1, 1, 1] and len({d.fingerprint for d in splits.values()}) == 1
    img = ds[0]["image"]
    assert img.shape == (1, COLS, ROWS, SLICES) and img.dtype == torch.float32
    hu = img[0, 2, 3, :].numpy() * 1000  # window [-1000, 1000] -> [-1, 1], so HU = value * 1000
    offset = round(float(hu[0]))
    assert offset in (0, 10, 20) and np.allclose(hu, offset + 100 * np.arange(SLICES), atol=1e-3)  # S increases
    assert np.allclose(ds.geometry["spacing"], [0.8, 0.7, 2.5])  # x from columns, y from rows (RAS), z slices
    assert ds.intensity["unit"] == "HU"


def test_no_header_field_travels_in_an_item(ct_root):
    item = DicomDataset("train", ct_root, size=[COLS, ROWS, SLICES], intensity=CT)[0]
    assert set(item) == {"image", "id"} and re.fullmatch(r"dicom-train-00000", item["id"])
    assert not any(word in repr(item) for word in ("DOE", "MRN", "Hospital", "patient0", "1970"))


def test_series_mixed_in_one_folder_are_grouped_by_uid(tmp_path):
    for s in range(3):
        real_series(tmp_path, name=f"x{s}_", offset=10 * s)  # 12 files, 3 series, one folder
    splits = [DicomDataset(s, tmp_path, size=[COLS, ROWS, SLICES], intensity=CT) for s in ("train", "val", "test")]
    assert [len(d) for d in splits] == [1, 1, 1]
    assert sorted(len(d.records[0].files) for d in splits) == [SLICES] * 3


def test_bad_series_are_listed(tmp_path):
    for s in range(3):
        real_series(tmp_path / f"good{s}")
    real_series(tmp_path / "single", n=1)
    real_series(tmp_path / "noorder", instance_numbers=False)
    real_series(tmp_path / "stacked", positions=[0.0, 0.0, 2.5, 5.0])
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "image.dcm").write_bytes(b"not a dicom file at all" * 10)
    (tmp_path / "fake" / "README").write_text("ignored: no extension and no DICM preamble")
    with pytest.raises(BadDataError) as info:
        DicomDataset("train", tmp_path, size=[COLS, ROWS, SLICES], intensity=CT)
    causes = {b.path.replace(str(tmp_path), ""): b.cause for b in info.value.bad}
    assert len(causes) == 4 and "suitable reader" not in str(info.value)
    assert "single 2D slice" in causes["/single/S000.dcm"]
    assert "InstanceNumber" in causes["/noorder/S000.dcm"]
    assert any(k.startswith("/stacked") and "zero slice spacing" in v for k, v in causes.items())
    assert "not a readable DICOM" in causes["/fake/image.dcm"]
    ok = DicomDataset("train", tmp_path, size=[COLS, ROWS, SLICES], intensity=CT, on_bad="skip")
    assert len(ok.quarantine) == 4 and torch.isfinite(ok[0]["image"]).all()


def test_empty_folder_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=f"no DICOM files .* under {tmp_path}"):
        DicomDataset("train", tmp_path, size=[8, 8, 8])


def test_dicom_conf_yaml_builds(tmp_path, ct_root):
    cfg = compose_train(tmp_path, ["dataset=dicom", f"dataset.datamodule.dataset.root={ct_root}",
                                   f"dataset.size=[{COLS},{ROWS},{SLICES}]", "dataset.datamodule.batch_size=1"])
    batch = next(iter(instantiate(cfg.dataset.datamodule, "dataset.datamodule").train_dataloader()))
    assert batch["image"].shape == (1, *cfg.dataset.image_shape)
