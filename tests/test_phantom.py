"""Tests of the built-in head phantom: determinism, contract, and covariate effects measured from the pixels."""

import re

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from synthmed.data import phantom
from synthmed.data.phantom import PhantomDataset

SMALL = {"n_train": 8, "n_val": 4, "n_test": 4}


@pytest.fixture(scope="module")
def cohort():
    """200 2D subjects, 30% lesions so both classes are well populated; default noise and bias."""
    return PhantomDataset("train", n_train=200, lesion_prevalence=0.3, seed=1)


def head_mask(x: np.ndarray, threshold: float) -> np.ndarray:
    """Largest connected foreground component with holes filled: the head, from pixels only."""
    labels, n = ndimage.label(ndimage.binary_fill_holes(x > threshold))
    sizes = ndimage.sum(labels > 0, labels, range(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def radius(mask: np.ndarray) -> np.ndarray:
    """Distance of every pixel from the mask centroid, in units of the mask's equivalent-circle radius."""
    yy, xx = np.indices(mask.shape)
    cy, cx = ndimage.center_of_mass(mask)
    return np.hypot(yy - cy, xx - cx) / np.sqrt(mask.sum() / np.pi)


def test_same_seed_same_pixels_other_seed_other_pixels():
    a, b, c = PhantomDataset(**SMALL), PhantomDataset(**SMALL), PhantomDataset(**SMALL, seed=1)
    assert torch.equal(a.image, b.image) and torch.equal(a.target, b.target)
    assert [a[i]["label"] for i in range(8)] == [b[i]["label"] for i in range(8)]
    assert not torch.equal(a.image, c.image) and not torch.equal(a.target, c.target)


def test_fingerprint_same_across_splits():
    prints = {PhantomDataset(split, **SMALL).fingerprint for split in ("train", "val", "test")}
    assert len(prints) == 1 and re.fullmatch(r"[0-9a-f]{64}", prints.pop())


@pytest.mark.parametrize("change", [{"seed": 1}, {"size": 32}, {"spatial_dims": 3, "size": 16}, {"n_val": 5},
                                    {"lesion_prevalence": 0.2}, {"noise_std": 0.0}, {"bias_strength": 0.1},
                                    {"lesion_radius": [0.1, 0.2]}])
def test_fingerprint_changes_with_every_setting(change):
    assert PhantomDataset(**{**SMALL, **change}).fingerprint != PhantomDataset(**SMALL).fingerprint


def test_lesion_radius_sets_the_finding_size():
    args = {**SMALL, "size": 32, "n_train": 40, "lesion_prevalence": 0.5}
    default = PhantomDataset(**args)
    assert PhantomDataset(**args, lesion_radius=[0.05, 0.1]).fingerprint == default.fingerprint  # default: unchanged
    large = PhantomDataset(**args, lesion_radius=[0.15, 0.2])
    sick = torch.as_tensor(default.covariates()["label"]) == 1
    radii = large._subjects["lesion_radius"]
    assert ((radii == 0) | ((radii >= 0.15) & (radii <= 0.2))).all() and (radii[sick.numpy()] > 0).any(1).all()
    bright = lambda ds: (ds.image[sick] > 0.9).flatten(1).sum(1).float().mean()  # noqa: E731 - lesion pixels
    assert bright(large) > 3 * bright(default)
    torch.testing.assert_close(large.image[~sick], default.image[~sick])  # healthy subjects are the same
    with pytest.raises(ValueError, match="lesion_radius"):
        PhantomDataset(**args, lesion_radius=[0.2, 0.1])


def test_fingerprint_changes_with_generator_version(monkeypatch):
    before = PhantomDataset(**SMALL).fingerprint
    monkeypatch.setattr(phantom, "GENERATOR_VERSION", phantom.GENERATOR_VERSION + 1)
    assert PhantomDataset(**SMALL).fingerprint != before


@pytest.mark.parametrize("dims,size", [(2, 16), (2, 48), (2, 64), (2, None), (3, 16), (3, 48), (3, None)])
def test_item_contract(dims, size):
    ds = PhantomDataset("val", spatial_dims=dims, size=size, n_train=2, n_val=3, n_test=2)
    side = size or (64 if dims == 2 else 32)
    assert len(ds) == 3 and ds.spatial_dims == dims and ds.channels == 1
    item = ds[2]
    for key in ("image", "target"):
        assert item[key].shape == (1, *(side,) * dims) and item[key].dtype == torch.float32
        assert item[key].min() >= -1 and item[key].max() <= 1 and item[key].std() > 0.1
    assert type(item["label"]) is int and item["label"] in (0, 1)
    assert type(item["attrs"]["sex"]) is int and type(item["attrs"]["age"]) is float
    assert item["id"] == "phantom-val-00002"


def test_items_are_copies_and_indexing_is_checked():
    ds = PhantomDataset(**SMALL)
    ds[0]["image"].fill_(0.5)
    assert not torch.all(ds[0]["image"] == 0.5)
    assert ds[-1]["id"] == "phantom-train-00007"
    with pytest.raises(IndexError):
        ds[8]


@pytest.mark.parametrize("arg,value", [("split", "dev"), ("spatial_dims", 1), ("size", 8), ("size", 300),
                                       ("size", 48.5), ("n_train", 0), ("n_val", 0), ("n_test", -1),
                                       ("lesion_prevalence", 1.5), ("lesion_prevalence", -0.1), ("noise_std", -0.1),
                                       ("lesion_prevalence", "0.1"), ("bias_strength", 1.0), ("seed", -1),
                                       ("seed", 1.5)])
def test_bad_args_raise_naming_the_arg(arg, value):
    with pytest.raises(ValueError, match=arg):
        PhantomDataset(**{**SMALL, arg: value})


def test_numpy_scalars_are_accepted():
    ds = PhantomDataset(size=np.int64(16), n_train=np.int64(4), seed=np.int64(3), lesion_prevalence=np.float32(0.5))
    assert ds.fingerprint == PhantomDataset(size=16, n_train=4, seed=3, lesion_prevalence=0.5).fingerprint


def test_intensity_mappings_are_recorded():
    ds = PhantomDataset(**SMALL)
    assert ds.intensity == {"kind": "linear", "native_min": 0.0, "native_max": 1.0, "unit": "a.u."}
    assert ds.target_intensity == {"kind": "linear", "native_min": -1000.0, "native_max": 1000.0, "unit": "HU"}


@pytest.mark.parametrize("p,n,expected", [(0.1, 200, 20), (0.1, 57, 6), (0.0, 30, 0), (1.0, 30, 30)])
def test_prevalence_is_exact(p, n, expected):
    ds = PhantomDataset("test", n_test=n, lesion_prevalence=p, size=16)
    labels = [ds[i]["label"] for i in range(n)]
    assert sum(labels) == expected and ds.covariates()["label"].tolist() == labels


def test_covariates_match_items_and_ranges(cohort):
    cov = cohort.covariates()
    assert set(np.unique(cov["sex"])) == {0, 1} and 20 <= cov["age"].min() and cov["age"].max() <= 90
    item = cohort[7]
    assert item["attrs"] == {"sex": int(cov["sex"][7]), "age": float(cov["age"][7])}


def test_lesions_are_bright_spots_in_the_brain(cohort):
    label, counts = cohort.covariates()["label"], []
    for x in cohort.image[:, 0].numpy():
        core = x[radius(head_mask(x, -0.6)) < 0.75]  # brain, well inside the bright scalp
        counts.append(np.sum(core + 1 > 1.25 * (np.median(core) + 1)))  # 25% above typical tissue, native scale
    counts = np.array(counts)
    assert counts[label == 1].mean() > 5 * max(counts[label == 0].mean(), 1.0)
    assert np.mean(counts[label == 1] > 0) > 0.8 and np.mean(counts[label == 0] > 0) < 0.3


def test_male_heads_are_larger(cohort):
    sex = cohort.covariates()["sex"]
    area = np.array([head_mask(x, -0.6).sum() for x in cohort.image[:, 0].numpy()])
    assert area[sex == 1].mean() > 1.07 * area[sex == 0].mean()


def test_ventricles_widen_with_age(cohort):
    dark = [np.sum((x < -0.4) & (radius(head_mask(x, -0.6)) < 0.4)) for x in cohort.image[:, 0].numpy()]
    assert stats.spearmanr(dark, cohort.covariates()["age"]).statistic > 0.5


def test_target_same_geometry_ct_contrast(cohort):
    for x, t in zip(cohort.image[:20, 0].numpy(), cohort.target[:20, 0].numpy()):
        mr, ct = head_mask(x, -0.6), head_mask(t, -0.5)  # MR: above 0.2 native; CT: above -500 HU
        assert (mr & ct).sum() / (mr | ct).sum() > 0.9
        r = radius(ct)
        assert r[t > 0.5].min() > 0.75  # everything above 500 HU is skull, at the rim
        assert t[r < 0.5].std() < 0.03 < 0.1 < x[r < 0.5].std()  # flat CT brain, contrasted MR brain
        assert abs(t[r < 0.5].mean()) < 0.05  # brain near water, 0-50 HU


def test_mr_noise_is_rician_and_target_noise_smaller():
    ds = PhantomDataset(**SMALL, noise_std=0.05)
    corner_mr = (ds.image[:, 0, :8, :8] + 1) / 2  # air, native scale
    assert 1.1 * 0.05 < corner_mr.mean() < 1.4 * 0.05  # Rician mean in air: sigma sqrt(pi/2) = 1.25 sigma
    assert ds.target[:, 0, :8, :8].std() < 0.5 * ds.image[:, 0, :8, :8].std()


def test_splits_are_disjoint_subjects():
    splits = [PhantomDataset(s, n_train=16, n_val=16, n_test=16, noise_std=0.0) for s in ("train", "val", "test")]
    ids = [{d[i]["id"] for i in range(len(d))} for d in splits]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for a, b in ((0, 1), (0, 2), (1, 2)):
        diff = (splits[a].image[:, None] - splits[b].image[None]).abs().mean(dim=(2, 3, 4))  # [16, 16] pairs
        assert diff.min() > 1e-3
