"""Conditioning accuracy: the readers are accurate on real held-out phantoms, flipped requests score low, garbage
scores at chance, per-class and per-bin keys, skips with a tag, and the helpers that build requests."""

from __future__ import annotations

import pytest
import torch

from synthmed.data.datamodule import covariates
from synthmed.data.phantom import PhantomDataset
from synthmed.metrics import names
from synthmed.metrics.conditioning import balanced_requests, score
from synthmed.metrics.suite import MetricSuite

ACC, BAL = names.COND_ACCURACY, names.COND_BALANCED_ACCURACY


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """Encoder cache shared with test_metrics_domain.py through the session base temp (one training)."""
    return tmp_path_factory.getbasetemp() / "domain_cache"


def phantom(split: str, size: int, n_eval: int) -> PhantomDataset:
    return PhantomDataset(split, spatial_dims=2, size=size, n_train=512, n_val=n_eval, n_test=n_eval)


@pytest.fixture(scope="module")
def lesions(shared_cache):
    """64 px: the lesions (1-3 balls of 1-2.4 px radius) are learnable; at 32 px (0.6-1.2 px) they are not."""
    train, val = phantom("train", 64, 300), phantom("val", 64, 300)  # 51 and 30 lesion subjects
    suite = MetricSuite(metrics=("cond_accuracy",), cache_dir=str(shared_cache))
    return suite, train, val, {"train": train.image, "train_cond": covariates(train), "fingerprint": train.fingerprint}


# ------------------------------------------------------------------------------------------------------ label
def test_reader_is_accurate_on_real_held_out_lesions(lesions):
    suite, train, val, kwargs = lesions
    truth = {"label": covariates(val)["label"]}
    with torch.inference_mode():  # as in Lightning's validation loop: the reader must still train
        result = suite(val.image, val.image, cond=truth, real_cond=truth, **kwargs)
    v = result.values
    assert v[BAL] > 0.9 and v[ACC] > 0.9, v
    assert v[BAL] == pytest.approx((v[names.per_class(ACC, 0)] + v[names.per_class(ACC, 1)]) / 2)
    assert v[names.on_real(ACC)] == v[ACC]  # the same images with their true labels: the ceiling itself
    assert "heads ['label']" in result.tags["cond_accuracy.label.encoder"]
    assert "cond_accuracy.domain.encoder" not in result.tags  # no age/sex requested: that encoder is not trained


def test_flipped_requests_score_low_and_the_ceiling_stays(lesions):
    suite, train, val, kwargs = lesions
    truth = covariates(val)["label"]
    v = suite(val.image, val.image, cond={"label": 1 - truth}, real_cond={"label": truth}, **kwargs).values
    assert v[ACC] < 0.1 and v[BAL] < 0.1
    assert v[names.on_real(ACC)] > 0.9


def test_garbage_scores_at_chance(lesions):
    suite, train, val, kwargs = lesions
    gen = torch.Generator().manual_seed(0)
    garbage = torch.rand(200, 1, 64, 64, generator=gen) * 2 - 1
    requested = torch.randint(2, (200,), generator=gen)
    v = suite(garbage, val.image, cond={"label": requested}, **kwargs).values
    assert abs(v[BAL] - 0.5) < 0.1, v


# -------------------------------------------------------------------------------------------------- covariates
def test_age_and_sex_readers_on_real_images(shared_cache):
    train, val = phantom("train", 32, 64), phantom("val", 32, 64)  # the data set of test_metrics_domain.py
    suite = MetricSuite(metrics=("cond_accuracy",), cache_dir=str(shared_cache))
    kwargs = {"train": train.image, "train_cond": covariates(train), "fingerprint": train.fingerprint}
    truth = covariates(val)
    cond = {"age": truth["age"], "sex": truth["sex"]}
    v = suite(val.image, val.image, cond=cond, **kwargs).values
    assert v[names.COND_AGE_MAE] < truth["age"].std() / 2, v  # std of U(20, 90) ages: 20 years
    assert v[names.COND_SEX_ACCURACY] > 0.7
    assert {names.per_bin(names.COND_AGE_MAE, a, b) for a, b in ((20, 45), (45, 70), (70, 90))} <= v.keys()
    assert {names.per_class(names.COND_SEX_ACCURACY, c) for c in (0, 1)} <= v.keys()
    shuffled = {"age": truth["age"][torch.randperm(len(val), generator=torch.Generator().manual_seed(0))]}
    assert suite(val.image, val.image, cond=shuffled, **kwargs).values[names.COND_AGE_MAE] > 2 * v[names.COND_AGE_MAE]


# ------------------------------------------------------------------------------------------------------- skips
def test_missing_conditions_skip_with_a_tag():
    x = torch.zeros(4, 1, 16, 16)
    suite = MetricSuite(metrics=("cond_accuracy",), domain_steps=2)
    result = suite(x, x, train=x)
    assert "cond_accuracy.skipped" in result.tags and not result.values
    result = suite(x, x, train=x, cond={"label": torch.ones(4, dtype=torch.long), "site": torch.ones(4)},
                   train_cond={"age": torch.arange(4.0)})  # no training labels: nothing can read "label"
    assert "cond_accuracy.skipped" in result.tags and "'label', 'site'" in result.tags["cond_accuracy.unread"]
    with pytest.raises(ValueError, match=r"cond\['label'\]"):
        suite(x, x, train=x, cond={"label": torch.ones(3)}, train_cond={"label": torch.ones(4, dtype=torch.long)})


# ----------------------------------------------------------------------------------------------------- helpers
def test_score_by_hand():
    predicted = {"label": torch.tensor([0, 1, 1, 1]), "age": torch.tensor([30.0, 50.0, 95.0, 10.0])}
    cond = {"label": torch.tensor([0, 0, 1, 1]), "age": torch.tensor([20.0, 50.0, 90.0, 15.0])}
    v = score(predicted, cond, age_bins=(20, 45, 70, 90))
    assert v[ACC] == 0.75 and v[names.per_class(ACC, 0)] == 0.5 and v[names.per_class(ACC, 1)] == 1.0
    assert v[BAL] == 0.75 and v[names.COND_AGE_MAE] == pytest.approx(5.0)
    # ages outside the edges count in the end bins: 15 with 20 in [20, 45), 90 in [70, 90]
    assert v[names.per_bin(names.COND_AGE_MAE, 20, 45)] == 7.5 and v[names.per_bin(names.COND_AGE_MAE, 70, 90)] == 5
    assert v[names.per_bin(names.COND_AGE_MAE, 45, 70)] == 0.0
    assert names.per_bin(names.COND_AGE_MAE, 70, 90) == "val/cond_age_mae_bin70_90"
    assert names.per_class(ACC, 1) == "val/cond_accuracy_class1"


def test_covariates_and_balanced_requests():
    train = phantom("train", 16, 8)
    cov = covariates(train)
    assert set(cov) == {"label", "sex", "age"} and all(v.shape == (512,) for v in cov.values())
    req = balanced_requests(cov, 10, seed=0)
    assert req["label"].tolist() == [0, 1] * 5  # the rare class is asked for as often as the common one
    rows = {(int(lab), int(s), float(a)) for lab, s, a in zip(cov["label"], cov["sex"], cov["age"])}
    assert all((int(lab), int(s), float(a)) in rows for lab, s, a in zip(req["label"], req["sex"], req["age"]))
    assert torch.equal(balanced_requests(cov, 10, seed=0)["age"], req["age"])
