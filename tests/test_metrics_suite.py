"""MetricSuite: skip-not-fatal without weights, 2D and 2.5D values vs independent computations, cache reuse."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance as pfid_frechet

from synthmed.metrics import domain as D
from synthmed.metrics import fid as F
from synthmed.metrics import inception, names
from synthmed.metrics.features import density_coverage, kid, precision_recall
from synthmed.metrics.memorization import memorization
from synthmed.metrics.suite import METRICS, MetricSuite

# scipy warns on the rank-deficient covariances of small sets; that is expected, not a failure
pytestmark = pytest.mark.filterwarnings("ignore:Matrix is singular")

DIMS = 64  # the first Inception block: same weights file and code path, ~4x cheaper than pool3 on CPU


def _images(n, seed, shape=(32, 32), brightness=0.0):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 1, *(s // 4 for s in shape), generator=g)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return (torch.nn.functional.interpolate(low, size=shape, mode=mode) + brightness).tanh()


def _numpy_fid(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """pytorch-fid's scipy-based Frechet distance of np.mean / np.cov statistics: an independent reference."""
    a, b = f1.double().numpy(), f2.double().numpy()
    return float(pfid_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))


# --------------------------------------------------------------------------------------------------- no weights
def test_missing_weights_skips_feature_metrics_and_computes_the_rest(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    suite = MetricSuite(metrics=("fid", "kid", "ms_ssim_diversity", "memorization"))
    with caplog.at_level(logging.WARNING, logger="synthmed.metrics"):
        result = suite(_images(8, 0), _images(8, 1), train=_images(16, 2))
    expected_folder = str(tmp_path / "hub" / "checkpoints")
    assert inception.WEIGHTS_FILE in caplog.text and expected_folder in caplog.text
    assert inception.WEIGHTS_FILE in result.tags["fid.skipped"] and expected_folder in result.tags["fid.skipped"]
    assert "kid.skipped" in result.tags and "memorization_feature.skipped" in result.tags
    assert names.FID not in result.values and names.KID not in result.values
    assert 0 <= result.values[names.MS_SSIM_DIVERSITY] <= 1
    assert names.MEMORIZATION_RATE in result.values


def test_invalid_arguments_name_themselves():
    with pytest.raises(ValueError, match="valid names") as err:
        MetricSuite(metrics=("fid", "is"))
    assert all(m in str(err.value) for m in METRICS)
    with pytest.raises(ValueError, match="fid_dims"):
        MetricSuite(fid_dims=100)
    with pytest.raises(ValueError, match="bootstrap"):
        MetricSuite(bootstrap=1)
    with pytest.raises(ValueError, match="train"):
        MetricSuite(metrics=("memorization",))(_images(4, 0), _images(4, 1))


# ----------------------------------------------------------------------------------------------------------- 2D
def test_all_metrics_2d_agree_with_direct_computation(torch_home):
    fake, real, train = _images(12, 0, brightness=0.3), _images(12, 1), _images(16, 2)
    suite = MetricSuite(metrics=METRICS, fid_dims=DIMS, kid_subset_size=8, bootstrap=5, domain_steps=20)
    result = suite(fake, real, train=train)
    v = result.values
    feats_fake, feats_real = suite.extractor().extract(fake), suite.extractor().extract(real)
    feats_train = suite.extractor().extract(train)
    assert v[names.FID] == pytest.approx(_numpy_fid(feats_fake, feats_real), rel=1e-4)
    assert v[names.KID] == pytest.approx(kid(feats_real, feats_fake, subset_size=8)[0], rel=1e-9)
    assert v[names.FID_CI_LOW] < v[names.FID_CI_HIGH]
    # The rest against their building blocks called directly on the same features (each block is checked against
    # an independent reference in its own test file).
    precision, recall = precision_recall(feats_real, feats_fake, suite.pr_k)
    density, coverage = density_coverage(feats_real, feats_fake, suite.dc_k)
    assert (v[names.PRECISION], v[names.RECALL]) == pytest.approx((precision, recall), rel=1e-6)
    assert (v[names.DENSITY], v[names.COVERAGE]) == pytest.approx((density, coverage), rel=1e-6)
    assert v[names.MEMORIZATION_RATE] == memorization(fake, train, real, quantile=suite.memorization_quantile).rate
    assert v[names.MEMORIZATION_RATE_FEATURE] == pytest.approx(
        memorization(feats_fake, feats_train, feats_real, quantile=suite.memorization_quantile).rate)
    assert v[names.FD_DOMAIN] == pytest.approx(D.fd_domain(suite.encoders.get("domain", train), fake, real), rel=1e-6)
    assert 0.0 <= v[names.MS_SSIM_DIVERSITY] <= 1.0
    assert "cond_accuracy.skipped" in result.tags  # no conditions passed: skipped with its reason, not guessed
    assert result.tags["fid.dims"] == str(DIMS) and result.tags["fid.mode"] == "2d"
    assert result.artifacts["memorization"].top_pairs
    assert suite(fake, real, train=train).values == v  # seeded: the same call gives the same numbers


# ----------------------------------------------------------------------------------------------------------- 3D
def test_3d_gives_three_planes_and_their_mean(torch_home):
    shape = (12, 12, 12)
    fake, real = _images(3, 0, shape, brightness=0.5), _images(3, 1, shape)
    fake[..., :6] = -1.0  # half of every volume blank along D: the axial plane differs from the others
    suite = MetricSuite(metrics=("fid", "kid"), fid_dims=DIMS, max_slices=4)
    result = suite(fake, real)
    v = result.values
    assert v[names.FID] == pytest.approx(np.mean([v[names.FID_AXIAL], v[names.FID_CORONAL], v[names.FID_SAGITTAL]]))
    assert len({v[names.FID_AXIAL], v[names.FID_CORONAL], v[names.FID_SAGITTAL]}) == 3
    kept = [0, 4, 7, 11]  # 4 evenly spaced of 12
    slicers = {  # independent indexing: axial fixes D (last axis), coronal fixes W, sagittal fixes H
        names.FID_AXIAL: lambda x, k: x[:, :, :, :, k],
        names.FID_CORONAL: lambda x, k: x[:, :, :, k, :],
        names.FID_SAGITTAL: lambda x, k: x[:, :, k, :, :],
    }
    ext = suite.extractor()
    for key, cut in slicers.items():
        f1 = ext.extract(torch.cat([cut(fake, k) for k in kept]))
        f2 = ext.extract(torch.cat([cut(real, k) for k in kept]))
        assert v[key] == pytest.approx(_numpy_fid(f1, f2), rel=1e-4), key
    assert result.tags["fid.mode"].startswith("2.5d") and result.tags["fid.n_fake"] == "3"


# -------------------------------------------------------------------------------------------------------- cache
def test_reference_features_are_cached_on_disk_and_in_memory(torch_home, tmp_path, monkeypatch):
    calls = []
    original = F.extract_features
    def counting(extractor, images, *args, **kwargs):
        calls.append(len(images))
        return original(extractor, images, *args, **kwargs)

    monkeypatch.setattr(F, "extract_features", counting)
    fake, real = _images(6, 0), _images(8, 1)
    make = lambda: MetricSuite(metrics=("fid",), fid_dims=DIMS, cache_dir=str(tmp_path))  # noqa: E731

    cold = make()(fake, real, ref_key="phantom2d/val")
    assert calls == [6, 8] and len(list(tmp_path.glob("*.npz"))) == 1
    (entry,) = tmp_path.glob("*.npz")
    assert set(np.load(entry)) == {"feat.2d"}  # 8 rows < 64 dims: FID goes low-rank, no covariance is stored
    big = F.FeatureSet({"2d": torch.randn(70, 1, DIMS, dtype=torch.float64)})
    arrays = big.to_arrays()
    assert {"feat.2d", "mu.2d", "sigma.2d"} == set(arrays)  # >= dims rows: the full-rank route reads sigma
    back = F.FeatureSet.from_arrays({"feat.2d": arrays["feat.2d"]})  # missing stats are computed on demand
    torch.testing.assert_close(back.stats("2d")[1], torch.from_numpy(arrays["sigma.2d"]))
    warm = make()(fake, real, ref_key="phantom2d/val")  # a new process would start like this
    assert calls == [6, 8, 6]
    assert warm.values == cold.values

    suite = make()
    suite(fake, real, ref_key="phantom2d/val")
    suite(fake, real, ref_key="phantom2d/val")
    assert calls == [6, 8, 6, 6, 6]  # memory hit: no disk read needed either

    final = suite.with_metrics(("fid", "kid"))  # the final evaluation after training: same network and features
    assert final.metrics == ("fid", "kid") and suite.metrics == ("fid",)
    assert final(fake, real, ref_key="phantom2d/val").values[names.FID] == cold.values[names.FID]
    assert calls == [6, 8, 6, 6, 6, 6] and final.extractor() is suite.extractor()
    with pytest.raises(ValueError, match="unknown"):
        suite.with_metrics(("fid", "sharpness"))

    make()(fake, _images(8, 5), ref_key="phantom2d/val")  # same key, different content: recomputed, not reused
    assert calls[-1] == 8 and len(list(tmp_path.glob("*.npz"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_memorization_with_one_heldout_image_is_skipped_not_fatal():
    gen = torch.Generator().manual_seed(0)
    suite = MetricSuite(metrics=("ms_ssim_diversity", "memorization"))
    x = torch.rand(4, 1, 16, 16, generator=gen) * 2 - 1
    result = suite(x, x[:1], train=x)
    assert "needs >= 2 held-out" in result.tags["memorization.skipped"]
    assert names.MS_SSIM_DIVERSITY in result.values and names.MEMORIZATION_RATE not in result.values
