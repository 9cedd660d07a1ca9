"""2D DICOM on files written here with pydicom: single-frame MONOCHROME1/2 radiographs at 8/12/16 bits (signed and
unsigned), the VOI window and a VOI LUT, JPEG baseline and JPEG 2000, an enhanced multi-frame CT with per-frame
rescale and positions, and non-image objects (an SR document, an ECG waveform) that are left out, not called corrupt.

Known answers: the DICOM PS3.3 C.11.2.1.2 linear window formula and Modality LUT arithmetic written out here, PIL's
own JPEG decoder for the lossy file, and the uncompressed pixels for the lossless one.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402  (after the importorskip)
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import (  # noqa: E402
    DigitalXRayImageStorageForPresentation,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)

from synthmed.data.dicom_images import DicomImageDataset, dicom_dataset  # noqa: E402
from synthmed.data.preflight import BadDataError  # noqa: E402

ROWS, COLS = 12, 10


def _base(sop_class, modality: str, series_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "ROE^RICHARD", "MRN-7", modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    ds.InstanceNumber = 1
    return ds


def radiograph(path, stored: np.ndarray, *, bits: int = 16, signed: bool = False, photometric="MONOCHROME2",
               window=None, slope=None, intercept=None, voi_lut=None, modality="DX", series_uid=None):
    """A single-frame grayscale image; `stored` holds the stored values (rows x cols)."""
    ds = _base(DigitalXRayImageStorageForPresentation, modality, series_uid)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    ds.ImagerPixelSpacing = [0.5, 0.5]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:  # (first input mapped, table of 16-bit outputs)
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut[1]), voi_lut[0], 16]
        item.add_new("LUTData", "US", [int(v) for v in voi_lut[1]])  # US: a list of values, not OW bytes
        ds.VOILUTSequence = Sequence([item])
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[(ds.BitsAllocated, signed)]
    ds.PixelData = np.ascontiguousarray(stored.astype(dtype)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def window_unit(x, center, width):
    """DICOM PS3.3 C.11.2.1.2.1 linear window, output rescaled to [-1, 1]."""
    y = ((x - (center - 0.5)) / (width - 1) + 0.5)
    return np.clip(y, 0.0, 1.0) * 2.0 - 1.0


def ramp(lo, hi, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(lo, hi + 1, size=(ROWS, COLS))


def one(folder, **kw):
    kw = {"size": [ROWS, COLS], "val_fraction": 0.0, "test_fraction": 0.0, "skip_empty": None, **kw}
    return DicomImageDataset("train", folder, **kw)


@pytest.mark.parametrize("bits,signed,lo,hi,slope,intercept", [
    (8, False, 0, 255, None, None),
    (12, False, 0, 4095, 1.0, -1024.0),
    (12, True, -2048, 2047, None, None),
    (16, False, 0, 65535, 0.5, -100.0),
    (16, True, -32768, 32767, 2.0, 10.0),
])
def test_bit_depths_and_modality_lut_in_fixed_window(tmp_path, bits, signed, lo, hi, slope, intercept):
    stored = ramp(lo, hi)
    radiograph(tmp_path / "a.dcm", stored, bits=bits, signed=signed, slope=slope, intercept=intercept)
    native = stored * (slope or 1.0) + (intercept or 0.0)
    window = [float(native.min()), float(native.max())]
    ds = one(tmp_path, intensity={"mode": "ct", "window": window})
    expected = (native - window[0]) / (window[1] - window[0]) * 2 - 1
    assert len(ds) == 1 and ds[0]["image"].shape == (1, ROWS, COLS)
    np.testing.assert_allclose(ds[0]["image"][0].numpy(), expected, atol=1e-5)


def test_monochrome1_is_inverted_and_window_follows_the_formula(tmp_path):
    stored = ramp(0, 4095)
    radiograph(tmp_path / "m2" / "a.dcm", stored, bits=12, window=(2000, 1500))
    radiograph(tmp_path / "m1" / "a.dcm", stored, bits=12, window=(2000, 1500), photometric="MONOCHROME1")
    mode = {"mode": "dicom_window"}
    m2, m1 = one(tmp_path / "m2", intensity=mode)[0]["image"][0], one(tmp_path / "m1", intensity=mode)[0]["image"][0]
    np.testing.assert_allclose(m2.numpy(), window_unit(stored, 2000, 1500), atol=1e-5)
    np.testing.assert_allclose(m1.numpy(), -m2.numpy(), atol=1e-6)
    assert one(tmp_path / "m1", intensity=mode).intensity == {"kind": "window", "native_min": 1250.0,
                                                               "native_max": 2750.0, "unit": "a.u.",
                                                               "source": "dicom_window"}


def test_voi_lut_sequence_is_applied(tmp_path):
    stored = ramp(0, 255)
    table = np.clip((np.arange(200) ** 2) // 10, 0, 65535)  # a non-linear LUT over inputs 50..249
    radiograph(tmp_path / "a.dcm", stored, bits=8, voi_lut=(50, table))
    got = one(tmp_path, intensity={"mode": "dicom_window"})[0]["image"][0].numpy()
    expected = table[np.clip(stored - 50, 0, 199)] / table.max() * 2 - 1  # output range = first..last entry
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_dicom_window_without_a_window_is_a_bad_file(tmp_path):
    radiograph(tmp_path / "a.dcm", ramp(0, 255), bits=8)
    with pytest.raises(BadDataError, match="neither a VOI LUT Sequence nor WindowCenter"):
        one(tmp_path, intensity={"mode": "dicom_window"})


def test_jpeg_baseline_decodes_like_pil(tmp_path):
    from PIL import Image
    stored = np.clip(ramp(0, 255) // 2 + np.arange(COLS) * 10, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", quality=90)
    path = radiograph(tmp_path / "raw.dcm", stored, bits=8)
    ds = pydicom.dcmread(path)
    ds.PixelData = pydicom.encaps.encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float64)
    got = one(tmp_path, intensity={"mode": "ct", "window": [0, 255]})[0]["image"][0].numpy()
    assert np.abs((got + 1) / 2 * 255 - reference).max() <= 1.01  # two libjpeg builds: IDCT rounding only
    assert np.abs(reference - stored).mean() > 0.1  # the file really is lossy-compressed


def test_jpeg2000_lossless_is_exact(tmp_path):
    stored = np.random.default_rng(0).integers(0, 4096, size=(64, 48))  # openjpeg needs >= 32 px per side
    path = radiograph(tmp_path / "a.dcm", stored, bits=12, slope=1.0, intercept=-1024.0)
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless)
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEG2000Lossless
    got = one(tmp_path, size=[64, 48], intensity={"mode": "ct", "window": [-1024, 3071]})[0]["image"][0].numpy()
    np.testing.assert_allclose(got, stored / 4095 * 2 - 1, atol=1e-5)


def enhanced_ct(path, n=3):
    """Frames stored in reverse z order, each with its own RescaleIntercept: HU of frame at z=k*2 mm = 100*k."""
    ds = _base(EnhancedCTImageStorage, "CT")
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLS, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.7, 0.8], 2.0
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames, stored = [], np.zeros((n, ROWS, COLS), np.uint16)
    for f in range(n):
        k = n - 1 - f  # stored frame f lies at z = 2k mm
        item, position, rescale = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1000 - 7 * f, "HU"
        item.PlanePositionSequence, item.PixelValueTransformationSequence = Sequence([position]), Sequence([rescale])
        frames.append(item)
        stored[f] = 1000 + 7 * f + 100 * k  # HU = 100 k after this frame's own intercept
        stored[f, 0, 0] += 1
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def non_images(folder):
    """An SR document and a 12-lead ECG waveform: DICOM objects without pixels."""
    sr = _base(pydicom.uid.BasicTextSRStorage, "SR")
    sr.ValueType, sr.ContentSequence = "CONTAINER", Sequence([])
    sr.save_as(folder / "report.dcm", enforce_file_format=True)
    ecg = _base(pydicom.uid.TwelveLeadECGWaveformStorage, "ECG")
    wave = Dataset()
    wave.NumberOfWaveformChannels, wave.NumberOfWaveformSamples, wave.SamplingFrequency = 1, 4, 500
    wave.WaveformBitsAllocated, wave.WaveformSampleInterpretation = 16, "SS"
    wave.WaveformData = np.arange(4, dtype=np.int16).tobytes()
    ecg.WaveformSequence = Sequence([wave])
    ecg.save_as(folder / "ecg.dcm", enforce_file_format=True)


def test_enhanced_multiframe_frames_are_slices_in_spatial_order_with_their_own_rescale(tmp_path):
    enhanced_ct(tmp_path / "ct.dcm")
    ds = one(tmp_path, intensity={"mode": "ct", "window": [-1000, 1000]})
    assert len(ds) == 3 and ds.intensity["unit"] == "HU"
    hu = [float(ds[i]["image"][0, 5, 5]) * 1000 for i in range(3)]
    np.testing.assert_allclose(hu, [0.0, 100.0, 200.0], atol=1e-3)
    assert [ds[i]["id"] for i in range(3)] == [f"dicom-train-00000-s{i:04d}" for i in range(3)]


def test_non_images_are_left_out_not_counted_as_bad(tmp_path):
    for i in range(3):
        radiograph(tmp_path / f"cr{i}.dcm", ramp(0, 4095, seed=i), bits=12, window=(2048, 4096))
    non_images(tmp_path)
    ds = one(tmp_path, intensity={"mode": "dicom_window"}, on_bad="fail")
    assert len(ds) == 3 and ds.quarantine == []
    assert sorted((p.rsplit("/", 1)[1], kind) for p, kind in ds.not_images) == [
        ("ecg.dcm", "ECG waveform"), ("report.dcm", "structured report")]


def test_truncated_file_is_named_and_skippable(tmp_path):
    for i in range(3):
        radiograph(tmp_path / f"cr{i}.dcm", ramp(0, 255, seed=i), bits=8)
    data = (tmp_path / "cr1.dcm").read_bytes()
    (tmp_path / "cr1.dcm").write_bytes(data[: len(data) - 50])
    with pytest.raises(BadDataError) as info:
        one(tmp_path, intensity={"mode": "ct", "window": [0, 255]})
    assert [b.path.rsplit("/", 1)[1] for b in info.value.bad] == ["cr1.dcm"]
    assert len(one(tmp_path, intensity={"mode": "ct", "window": [0, 255]}, on_bad="skip")) == 2


def test_series_stay_in_one_split_and_no_header_travels(tmp_path):
    for s in range(6):
        uid = generate_uid()
        for view in range(2):  # PA and lateral of one study: one series, two items, always in the same split
            radiograph(tmp_path / f"s{s}v{view}.dcm", ramp(0, 255, seed=10 * s + view), bits=8, series_uid=uid)
    splits = {s: DicomImageDataset(s, tmp_path, size=[8, 8], intensity={"mode": "ct", "window": [0, 255]},
                                   skip_empty=None, val_fraction=0.2, test_fraction=0.2) for s in ("train", "val")}
    assert all(len(d) % 2 == 0 for d in splits.values()) and sum(len(d.records) for d in splits.values()) < 6
    names = {f for d in splits.values() for r in d.records for f in r.files}
    assert len(names) == sum(2 * len(d.records) for d in splits.values())  # records are series of two files
    item = splits["train"][0]
    assert set(item) == {"image", "id"} and not any(w in repr(item) for w in ("ROE", "MRN", "s0v0"))


def test_pad_keeps_aspect_and_geometry_scales_spacing(tmp_path):
    radiograph(tmp_path / "a.dcm", ramp(1, 255), bits=8)  # 12 x 10 at 0.5 mm
    ds = one(tmp_path, size=[6, 6], intensity={"mode": "ct", "window": [0, 255]})
    image = ds[0]["image"][0]
    padded = [c for c in range(6) if torch.all(image[:, c] == -1.0)]
    assert image.shape == (6, 6) and len(padded) == 1 and padded[0] in (0, 5)  # 12 x 10 -> 6 x 5, one column pad
    assert ds.geometry["spacing"] == [1.0, 1.0, 1.0]  # 12 rows -> 6: 0.5 mm becomes 1.0 mm


def test_factory_routes_by_spatial_dims(tmp_path):
    radiograph(tmp_path / "a.dcm", ramp(0, 255), bits=8)
    kw = {"size": [ROWS, COLS], "val_fraction": 0.0, "test_fraction": 0.0, "slice_axis": 2, "spacing": None,
          "volume_index": None, "slice_range": None, "skip_empty": None, "intensity": {"mode": "dicom_window"}}
    assert isinstance(dicom_dataset("train", tmp_path, spatial_dims=2, **{**kw, "intensity": {"mode": "mr"}}),
                      DicomImageDataset)
    with pytest.raises(ValueError, match="intensity.mode=dicom_window is for 2D"):
        dicom_dataset("train", tmp_path, spatial_dims=3, **kw)


def chest_like(seed: int, photometric: str) -> np.ndarray:
    """A 12-bit 'radiograph': two bright lung-shaped ellipses on a dark body, with noise (stored values)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :32]
    body = ((yy - 20) / 18) ** 2 + ((xx - 16) / 14) ** 2 < 1
    lungs = [((yy - 18) / 12) ** 2 + ((xx - cx) / 5) ** 2 < 1 for cx in (9 + rng.integers(-1, 2), 23)]
    image = 300 + 1500 * body - 900 * (lungs[0] | lungs[1]) + rng.normal(0, 40, (40, 32))
    image = np.clip(image, 0, 4095)
    return (4095 - image if photometric == "MONOCHROME1" else image).astype(np.uint16)


@pytest.mark.slow  # ~50 s: trains, evaluates and exports
def test_ddpm_2d_smoke_on_dicom_radiographs_exports_marked_dicom(run_root, tmp_path):
    from mlflow.tracking import MlflowClient

    from synthmed.sample import sample
    from synthmed.train import train
    from tests.conftest import compose_train

    folder = tmp_path / "cxr"
    for i in range(10):
        photometric = "MONOCHROME1" if i % 2 else "MONOCHROME2"  # CR plates often store inverted
        radiograph(folder / f"cxr{i:02d}.dcm", chest_like(i, photometric), bits=12, window=(1200, 2400),
                   photometric=photometric, modality="CR")
    non_images(folder)
    cfg = compose_train(run_root, ["dataset=dicom", "debug=smoke", "dataset.spatial_dims=2", "dataset.size=[16,16]",
                                   "dataset.image_shape=[1,16,16]", f"dataset.datamodule.dataset.root={folder}",
                                   "dataset.datamodule.dataset.intensity.mode=dicom_window",
                                   "dataset.datamodule.dataset.val_fraction=0.2", "model.process.num_inference_steps=2",
                                   "eval.n_samples=4"])
    values = train(cfg)
    assert np.isfinite(values["val/ms_ssim_diversity"])
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("ddpm-dicom-")

    out = tmp_path / "exported"
    paths = sample(compose_train(run_root, [f"run={run.info.run_id}", "n=2", "format=dicom", f"out={out}"],
                                 config_name="sample"))
    assert [p.name for p in paths] == ["sample_000000.dcm", "sample_000001.dcm"]
    ds = pydicom.dcmread(paths[0])
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.SeriesDescription.startswith("SYNTHETIC")
    assert ds.PatientName == "SYNTHETIC^SYNTHMED" and "ROE" not in str(ds) and ds.Modality == "OT"
    assert ds.pixel_array.shape == (16, 16) and (out / "sample_000000.json").is_file()
    native = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)  # back in the data's window: 600..1800
    assert 600 - 1e-3 <= native.min() and native.max() <= 1800 + 1e-3
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [40 / 16 * 0.5] * 2)  # 40 rows -> 16 at 0.5 mm


def test_enhanced_multiframe_is_one_volume_in_3d(tmp_path):
    from synthmed.data.dicom import DicomDataset

    enhanced_ct(tmp_path / "ct.dcm")
    ds = DicomDataset("train", tmp_path, size=[COLS, ROWS, 3], intensity={"mode": "ct", "window": [-1000, 1000]},
                      val_fraction=0.0, test_fraction=0.0)
    image = ds[0]["image"]
    assert image.shape == (1, COLS, ROWS, 3)
    np.testing.assert_allclose(image[0, 5, 5, :].numpy() * 1000, [0.0, 100.0, 200.0], atol=1e-3)  # S increases
    np.testing.assert_allclose(ds.geometry["spacing"], [0.8, 0.7, 2.0])  # x from columns, y from rows, z frames
