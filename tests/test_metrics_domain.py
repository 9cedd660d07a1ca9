"""In-domain Frechet distance: small within a distribution, monotone in corruptions (2D and 3D), deterministic
training that leaves the caller's RNG alone, and an encoder cache that is hit instead of retraining."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from synthmed.data.datamodule import covariates
from synthmed.data.phantom import PhantomDataset
from synthmed.metrics import domain as D
from synthmed.metrics import names
from synthmed.metrics.suite import MetricSuite

PROVENANCE = ("encoder", "weights_sha256", "dims", "train_steps", "n_real", "n_fake")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """Encoder cache shared with test_metrics_conditioning.py through the session base temp (one training)."""
    return tmp_path_factory.getbasetemp() / "domain_cache"


def phantom(split: str, spatial_dims: int, size: int, n_train: int, n_eval: int) -> PhantomDataset:
    return PhantomDataset(split, spatial_dims=spatial_dims, size=size, n_train=n_train, n_val=n_eval, n_test=n_eval)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, *spatial]`` along every spatial axis (edge-replicated)."""
    r = 3
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    for d in range(x.ndim - 2):
        shape = [1, 1] + [1] * (x.ndim - 2)
        shape[2 + d] = 2 * r + 1
        pad = [0] * (2 * (x.ndim - 2))
        pad[2 * (x.ndim - 3 - d)] = pad[2 * (x.ndim - 3 - d) + 1] = r  # F.pad lists the last axis first
        x = conv(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x


def _corruptions(x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return {"blur": [blur(x, s) for s in (0.5, 1.0, 2.0)],  # pixels
            "noise": [x + s * noise for s in (0.1, 0.2, 0.4)],  # std in [-1, 1] units
            "shift": [x + s for s in (0.05, 0.1, 0.2)]}  # intensity offset


def _assert_monotone(suite, real, fake, kwargs):
    same = suite(fake, real, **kwargs).values[names.FD_DOMAIN]
    for kind, levels in _corruptions(fake).items():
        values = [suite(c, real, **kwargs).values[names.FD_DOMAIN] for c in levels]
        assert same < values[0] < values[1] < values[2], (kind, same, values)
    return same


# ----------------------------------------------------------------------------------------------------------- 2D
def test_2d_small_within_the_distribution_and_monotone_in_corruption(shared_cache):
    train, val, test = (phantom(s, 2, 32, 512, 64) for s in ("train", "val", "test"))
    suite = MetricSuite(metrics=("fd_domain",), cache_dir=str(shared_cache))
    kwargs = {"train": train.image, "train_cond": covariates(train), "fingerprint": train.fingerprint}
    with torch.inference_mode():  # as in Lightning's validation loop: the encoder must still train
        result = suite(test.image, val.image, **kwargs)
    same = _assert_monotone(suite, val.image, test.image, kwargs)
    assert result.values[names.FD_DOMAIN] == pytest.approx(same)
    tags = result.tags
    assert all(f"fd_domain.{k}" in tags for k in PROVENANCE)
    assert tags["fd_domain.dims"] == "112" and tags["fd_domain.n_fake"] == tags["fd_domain.n_real"] == "64"
    assert "age" in tags["fd_domain.encoder"] and "2D" in tags["fd_domain.encoder"]


# ----------------------------------------------------------------------------------------------------------- 3D
def test_3d_volumes_get_their_own_encoder(tmp_path):
    train, val, test = (phantom(s, 3, 16, 64, 16) for s in ("train", "val", "test"))
    suite = MetricSuite(metrics=("fd_domain",), cache_dir=str(tmp_path), domain_steps=40)
    kwargs = {"train": train.image, "train_cond": covariates(train)}
    same = _assert_monotone(suite, val.image, test.image, kwargs)
    tags = suite(test.image, val.image, **kwargs).tags
    assert "3D" in tags["fd_domain.encoder"] and tags["fd_domain.train_steps"] == "40"
    assert same < 0.5 * suite(blur(test.image, 1.0), val.image, **kwargs).values[names.FD_DOMAIN]


# -------------------------------------------------------------------------------------------------- determinism
def test_training_is_deterministic_and_leaves_the_caller_alone():
    train = phantom("train", 2, 16, 64, 8)
    targets = D.targets_of(covariates(train), len(train))
    settings = D.EncoderSettings(steps=15, batch_size=8)
    torch.manual_seed(123)
    rng, threads, det = torch.get_rng_state(), torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    a, b = (D.fit_encoder(train.image, targets, settings) for _ in range(2))
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's training noise does not shift
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.sha256 == b.sha256
    c = D.fit_encoder(train.image, targets, D.EncoderSettings(steps=15, batch_size=8, seed=1))
    assert c.sha256 != a.sha256  # the seed matters, so the equality above is not vacuous


# -------------------------------------------------------------------------------------------------------- cache
def test_cache_hit_loads_the_weights_instead_of_training(tmp_path, monkeypatch, caplog):
    calls = []
    original = D.fit_encoder
    monkeypatch.setattr(D, "fit_encoder", lambda *a, **k: calls.append(1) or original(*a, **k))
    train, val = phantom("train", 2, 16, 64, 16), phantom("val", 2, 16, 64, 16)
    make = lambda: MetricSuite(metrics=("fd_domain",), cache_dir=str(tmp_path), domain_steps=15)  # noqa: E731
    kwargs = {"train": train.image, "train_cond": covariates(train), "fingerprint": train.fingerprint}

    cold = make()(val.image[:8], val.image[8:], **kwargs)
    files = list((tmp_path / "domain").glob(f"{train.fingerprint}-domain-*.pt"))
    assert len(calls) == 1 and len(files) == 1
    payload = torch.load(files[0], weights_only=True)
    assert set(payload["heads"]) == {"age", "sex", "noise_level"}
    mtime = files[0].stat().st_mtime_ns
    warm = make()(val.image[:8], val.image[8:], **kwargs)  # a new process would start like this
    assert len(calls) == 1 and files[0].stat().st_mtime_ns == mtime
    assert warm.values == cold.values
    assert warm.tags["fd_domain.weights_sha256"] == cold.tags["fd_domain.weights_sha256"]
    assert warm.tags["fd_domain.weights_file"] == str(files[0])

    changed = {**kwargs, "train": train.image.flip(-1)}  # same fingerprint, other content: retrained, not reused
    make()(val.image[:8], val.image[8:], **changed)
    assert len(calls) == 2 and len(list((tmp_path / "domain").glob("*.pt"))) == 2

    files[0].write_bytes(b"not a checkpoint")  # a corrupt file is a miss, never a wrong encoder
    with caplog.at_level(logging.WARNING, logger="synthmed.metrics"):
        again = make()(val.image[:8], val.image[8:], **kwargs)
    assert len(calls) == 3 and "unreadable" in caplog.text and again.values == cold.values
    assert not list((tmp_path / "domain").glob("*.tmp"))


# ----------------------------------------------------------------------------------------------------- contract
def test_arguments_and_requirements_name_themselves():
    x = torch.zeros(4, 1, 16, 16)
    with pytest.raises(ValueError, match="train"):
        MetricSuite(metrics=("fd_domain",))(x, x)
    # Too few samples: no number (a distance from fewer is not comparable), the reason in a tag, the run goes on.
    few = MetricSuite(metrics=("fd_domain",), min_samples=8)(x, x, train=x)
    assert names.FD_DOMAIN not in few.values and "min_samples=8" in few.tags["fd_domain.skipped"]
    with pytest.raises(ValueError, match="domain_steps"):
        MetricSuite(domain_steps=0)
    with pytest.raises(ValueError, match="cond_age_bins"):
        MetricSuite(cond_age_bins=(50, 20))
    with pytest.raises(ValueError, match=r"train_cond\['age'\]"):
        MetricSuite(metrics=("fd_domain",))(x, x, train=x, train_cond={"age": torch.ones(3)})
    assert not MetricSuite(metrics=("fid",)).needs_train
    assert MetricSuite(metrics=("memorization",)).needs_train and not MetricSuite(metrics=("memorization",)).needs_cond
    assert MetricSuite(metrics=("fd_domain",)).needs_train and MetricSuite(metrics=("cond_accuracy",)).needs_cond
