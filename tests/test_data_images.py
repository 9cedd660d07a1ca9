"""ImageFolderDataset (8/16-bit PNG, RGB JPEG, TIFF; class folders and CSV) and MedMNISTDataset (2D/3D npz)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.config import instantiate
from synthmed.data.image_folder import ImageFolderDataset
from synthmed.data.medmnist import MedMNISTDataset
from tests.conftest import compose_train

RNG = np.random.default_rng(0)


def mednist_like(root, classes=("AbdomenCT", "CXR", "Hand"), per_class=4, size=16):
    """root/<Class>/*.jpeg, grayscale, each class its own constant brightness plus noise."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(60 * c + RNG.normal(40, 5, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:06d}.jpeg", quality=95)
    return root


def test_class_folders_give_labels_and_size(tmp_path):
    root = mednist_like(tmp_path / "MedNIST")
    splits = {s: ImageFolderDataset(s, root, size=[8, 8]) for s in ("train", "val", "test")}
    train = splits["train"]
    assert train.classes == ["AbdomenCT", "CXR", "Hand"] and sum(len(d) for d in splits.values()) == 12
    item = train[0]
    assert item["image"].shape == (1, 8, 8) and item["image"].dtype == torch.float32
    assert re.fullmatch(r"image-train-\d{5}", item["id"]) and item["label"] in (0, 1, 2)
    assert train.intensity == {"kind": "linear", "native_min": 0, "native_max": 255, "bits": 8}
    assert len({d.fingerprint for d in splits.values()}) == 1
    # brightness follows the class folder, so labels are attached to the right files
    means = {}
    for d in splits.values():
        for i in range(len(d)):
            means.setdefault(d[i]["label"], []).append(float(d[i]["image"].mean()))
    assert np.mean(means[0]) < np.mean(means[1]) < np.mean(means[2])


def test_8_and_16_bit_png_and_tiff_map_full_range(tmp_path):
    ramp8 = np.tile(np.arange(0, 256, 17, dtype=np.uint8), (16, 1))  # 0 .. 255 in 16 columns
    ramp16 = ramp8.astype(np.uint16) * 257  # the same picture at 16 bits
    for i in range(2):
        Image.fromarray(ramp8).save(tmp_path / f"a{i}_8.png")
        Image.fromarray(ramp16).save(tmp_path / f"b{i}_16.png")
        Image.fromarray(ramp16).save(tmp_path / f"c{i}_16.tif")
    ds = ImageFolderDataset("train", tmp_path, size=[16, 16], val_fraction=0.2, test_fraction=0.2)
    assert ds.intensity["native_max"] == 65535 and ds.intensity["bits"] == 16  # deepest depth found
    images = [ds[i]["image"][0] for i in range(len(ds))]
    for img in images:
        assert torch.allclose(img[0], torch.linspace(-1, 1, 16), atol=1e-5)  # 8- and 16-bit agree
    assert len(images) == 4 and ds.classes is None


def test_rgb_jpeg_to_gray_and_gray_to_rgb(tmp_path):
    rgb = np.zeros((12, 12, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    for i in range(3):
        Image.fromarray(rgb).save(tmp_path / f"r{i}.jpg", quality=100)
        Image.fromarray(np.full((12, 12), 128, np.uint8)).save(tmp_path / f"g{i}.png")
    gray = ImageFolderDataset("train", tmp_path, channels=1, size=[12, 12], val_fraction=0.2, test_fraction=0.2)
    color = ImageFolderDataset("train", tmp_path, channels=3, size=[12, 12], val_fraction=0.2, test_fraction=0.2)
    seen = set()
    for i in range(len(gray)):
        g, c = gray[i]["image"], color[i]["image"]
        assert g.shape == (1, 12, 12) and c.shape == (3, 12, 12)
        if c[0].mean() > 0.9 and c[1].mean() < -0.9:  # the red file: luminance 0.299 -> -0.40 in [-1, 1]
            assert abs(float(g.mean()) - (0.299 * 2 - 1)) < 0.03
            seen.add("red")
        else:  # gray file replicated to three equal channels
            assert torch.equal(c[0], c[1]) and torch.equal(c[1], c[2])
            seen.add("gray")
    assert seen == {"red", "gray"}


def test_pad_resize_keeps_aspect_ratio(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 16), 255, np.uint8)).save(tmp_path / f"w{i}.png")
    ds = ImageFolderDataset("train", tmp_path, size=[16, 16], resize="pad")
    img = ds[0]["image"][0]
    assert torch.all(img[4:12] > 0.99) and torch.all(img[:4] == -1) and torch.all(img[12:] == -1)


def test_csv_manifest_with_string_labels_and_attrs(tmp_path):
    rows = ["image,label,age,split"]
    for i, (finding, split) in enumerate([("normal", "train"), ("pneumonia", "train"), ("normal", "val"),
                                          ("pneumonia", "test")]):
        Image.fromarray(RNG.integers(0, 255, (20, 10), dtype=np.uint8)).save(tmp_path / f"cxr{i}.png")
        rows.append(f"cxr{i}.png,{finding},{30.5 + i},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = ImageFolderDataset("train", tmp_path / "labels.csv", size=[16, 8], attr_columns=["age"])
    assert ds.classes == ["normal", "pneumonia"] and [ds[i]["label"] for i in range(2)] == [0, 1]
    assert ds[1]["attrs"] == {"age": 31.5} and ds[0]["image"].shape == (1, 16, 8)
    with pytest.raises(ValueError, match=r"row 2: column 'age' = 'old' is not a number"):
        (tmp_path / "bad.csv").write_text("image,age\ncxr0.png,old\n")
        ImageFolderDataset("train", tmp_path / "bad.csv", attr_columns=["age"])


def test_loose_files_next_to_class_folders_are_an_error(tmp_path):
    root = mednist_like(tmp_path / "m")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "stray.png")
    with pytest.raises(ValueError, match="stray.png"):
        ImageFolderDataset("train", root)
    assert ImageFolderDataset("train", root, labels_from_folders=False).classes is None


def test_reference_images_and_covariates_come_without_augmentation_or_decoding(tmp_path, monkeypatch):
    from synthmed.data.datamodule import GenerativeDataModule, covariates

    root = mednist_like(tmp_path / "MedNIST")
    make = lambda split: ImageFolderDataset(split, root, size=[8, 8], augment={"prob": 1.0, "noise_std": 0.2})  # noqa: E731
    dm = GenerativeDataModule(make)
    train = dm.split("train")
    assert not torch.equal(train[0]["image"], train[0]["image"])  # items for training are augmented ...
    reference = dm.images("train")
    torch.testing.assert_close(reference, dm.images("train"), rtol=0, atol=0)  # ... reference sets are not
    torch.testing.assert_close(reference[0], train.load(0).float(), rtol=0, atol=0)
    monkeypatch.setattr(train, "load", lambda i: pytest.fail("covariates decoded an image"))
    labels = covariates(train)["label"]
    assert labels.tolist() == [train.records[r].label for r, _ in train._index] and labels.dtype == torch.int64


def test_mednist_preset_builds(tmp_path):
    root = mednist_like(tmp_path / "MedNIST", size=64)
    cfg = compose_train(tmp_path, ["dataset=mednist", f"dataset.datamodule.dataset.root={root}",
                                   "dataset.datamodule.batch_size=4"])
    batch = next(iter(instantiate(cfg.dataset.datamodule, "dataset.datamodule").train_dataloader()))
    assert batch["image"].shape == (4, *cfg.dataset.image_shape) and batch["label"].dtype == torch.int64


# ---- MedMNIST ----------------------------------------------------------------------------------------------------

def medmnist_npz(path, shape, n=(6, 3, 3), multilabel=False):
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = RNG.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = RNG.integers(0, 2, (count, 14 if multilabel else 1)).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return arrays


def test_medmnist_2d_gray_and_rgb(tmp_path):
    arrays = medmnist_npz(tmp_path / "pneumoniamnist.npz", (28, 28))
    ds = MedMNISTDataset("val", tmp_path / "pneumoniamnist.npz")
    assert (len(ds), ds.spatial_dims, ds.channels) == (3, 2, 1)
    item = ds[1]
    assert item["image"].shape == (1, 28, 28) and item["id"] == "medmnist-val-00001"
    expected = arrays["val_images"][1].astype(np.float32) / 127.5 - 1
    assert np.allclose(item["image"][0].numpy(), expected) and item["label"] == int(arrays["val_labels"][1, 0])
    assert ds.intensity == {"kind": "linear", "native_min": 0, "native_max": 255, "bits": 8}
    assert ds.fingerprint == MedMNISTDataset("train", tmp_path / "pneumoniamnist.npz").fingerprint
    medmnist_npz(tmp_path / "pathmnist.npz", (28, 28, 3), multilabel=True)
    rgb = MedMNISTDataset("train", tmp_path / "pathmnist.npz", channels=3, size=[32, 32])
    assert rgb[0]["image"].shape == (3, 32, 32) and "label" not in rgb[0]  # multi-label: no single int label
    assert rgb.covariates() == {} and ds.covariates()["label"].tolist() == arrays["val_labels"][:, 0].tolist()
    assert MedMNISTDataset("train", tmp_path / "pathmnist.npz", channels=1)[0]["image"].shape == (1, 28, 28)


def test_medmnist_3d(tmp_path):
    medmnist_npz(tmp_path / "organmnist3d.npz", (28, 28, 28))
    ds = MedMNISTDataset("train", tmp_path / "organmnist3d.npz", spatial_dims=3, size=[16, 16, 16])
    x = ds[0]["image"]
    assert ds.spatial_dims == 3 and x.shape == (1, 16, 16, 16) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match="spatial_dims=2 but"):
        MedMNISTDataset("train", tmp_path / "organmnist3d.npz", spatial_dims=2)


def test_medmnist_missing_or_broken_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere.npz not found.*never downloads.*download it yourself"):
        MedMNISTDataset("train", tmp_path / "nothere.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="broken.npz is not a readable .npz"):
        MedMNISTDataset("train", tmp_path / "broken.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="has no key 'train_images'"):
        MedMNISTDataset("train", tmp_path / "other.npz")


def test_medmnist_conf_yaml(tmp_path):
    medmnist_npz(tmp_path / "p.npz", (28, 28))
    cfg = compose_train(tmp_path, ["dataset=medmnist", f"dataset.datamodule.dataset.root={tmp_path / 'p.npz'}",
                                   "dataset.datamodule.batch_size=2"])
    batch = next(iter(instantiate(cfg.dataset.datamodule, "dataset.datamodule").train_dataloader()))
    assert batch["image"].shape == (2, *cfg.dataset.image_shape)
