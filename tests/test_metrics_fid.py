"""FID: parity with pytorch-fid, our matrix square root vs scipy, weights handling, .npz stats, min_samples, cache.

No network and no real Inception weights here: a seeded random state dict with the FID Inception's exact keys is
written into a temporary TORCH_HOME, where both synthmed and pytorch-fid look for it.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from pytorch_fid import fid_score as pfid

from synthmed.metrics import fid as F
from synthmed.metrics import fid_cli, inception, names
from synthmed.metrics.cache import ReferenceCache
from synthmed.metrics.suite import MetricSuite

# scipy warns on the rank-deficient covariances of small sets; that is expected, not a failure
pytestmark = pytest.mark.filterwarnings("ignore:Matrix is singular")

N_IMAGES = 12  # per folder: enough for a non-trivial covariance, cheap at ~0.1 s per image on CPU


# ------------------------------------------------------------------------------------------------------ fixtures
def _write_pngs(folder, n, mean, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.clip(rng.normal(mean, 50, (32, 32)), 0, 255).astype(np.uint8)  # grayscale, like most medical data
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pngs")
    return str(_write_pngs(root / "a", N_IMAGES, 110, 0)), str(_write_pngs(root / "b", N_IMAGES, 150, 1))


@pytest.fixture(scope="module")
def pytorch_fid_value(folders, weights_home):
    """pytorch-fid's own number for the two folders at 2048 dims (pool3): the independent reference.

    Computed once: scipy's sqrtm at 2048 dims alone costs ~15 s on 2 cores.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(weights_home))
        return float(pfid.calculate_fid_given_paths(list(folders), 50, "cpu", 2048, num_workers=0))


@pytest.fixture(scope="module")
def pytorch_fid_value_64(folders, weights_home):
    """The same at 64 dims (first block): for checks of input handling, which does not depend on the block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(weights_home))
        return float(pfid.calculate_fid_given_paths(list(folders), 50, "cpu", 64, num_workers=0))


def _printed_fid(capsys) -> float:
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("FID: ")][-1]
    assert line.startswith("FID:  ")  # pytorch-fid's exact format: print('FID: ', value)
    return float(line.split()[-1])


# ------------------------------------------------------------------------------------------ parity with pytorch-fid
def test_cli_matches_pytorch_fid_on_png_folders(folders, pytorch_fid_value, torch_home, capsys):
    assert fid_cli.main([*folders, "--num-workers", "0", "--device", "cpu"]) == 0
    assert _printed_fid(capsys) == pytest.approx(pytorch_fid_value, rel=1e-3)
    assert pytorch_fid_value > 1.0  # the two folders really differ, so agreement is not 0 == 0


def test_npz_stats_interoperate_with_pytorch_fid(folders, pytorch_fid_value_64, torch_home, tmp_path, capsys):
    """Stats files both ways, at 64 dims (the file format and reading do not depend on the block; keeps it fast)."""
    theirs = tmp_path / "theirs.npz"
    pfid.save_fid_stats([folders[0], str(theirs)], 50, "cpu", 64, num_workers=0)
    assert fid_cli.main([str(theirs), folders[1], "--dims", "64", "--num-workers", "0"]) == 0  # their file, our FID
    assert _printed_fid(capsys) == pytest.approx(pytorch_fid_value_64, rel=1e-3)

    ours = tmp_path / "ours.npz"
    assert fid_cli.main(["--save-stats", folders[0], str(ours), "--dims", "64", "--num-workers", "0"]) == 0
    with np.load(ours) as f, np.load(theirs) as g:  # read the way pytorch-fid reads stats files
        np.testing.assert_allclose(f["mu"], g["mu"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(f["sigma"], g["sigma"], rtol=1e-4, atol=1e-9)
    assert fid_cli.main(["--save-stats", folders[0], str(ours)]) == 2  # refuses to overwrite, like pytorch-fid


def test_tensor_path_matches_pytorch_fid(folders, pytorch_fid_value_64, torch_home):
    """Grayscale tensors in [-1, 1] through the suite give pytorch-fid's number for the same PNGs."""
    a, b = (_load_gray(f) for f in folders)
    result = MetricSuite(metrics=("fid",), fid_dims=64)(b, a)
    assert result.values[names.FID] == pytest.approx(pytorch_fid_value_64, rel=1e-3)
    assert result.tags["fid.n_fake"] == str(N_IMAGES) and result.tags["fid.dims"] == "64"
    assert result.tags["fid.weights_sha256"] == inception.weights_sha256(
        torch_home / "hub" / "checkpoints" / inception.WEIGHTS_FILE)
    assert {"fid.extractor", "fid.resize", "fid.implementation", "fid.n_real"} <= result.tags.keys()


def _load_gray(folder) -> torch.Tensor:
    arrays = [np.asarray(Image.open(p)) for p in fid_cli.folder_files(folder)]
    return torch.from_numpy(np.stack(arrays)).float().div(255).mul(2).sub(1).unsqueeze(1)  # [N, 1, 32, 32]


def test_cli_ref_cache_reuses_second_path(folders, torch_home, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    args = [*folders, "--dims", "64", "--num-workers", "0", "--ref-cache", str(cache)]
    assert fid_cli.main(args) == 0
    cold = _printed_fid(capsys)
    seen = []
    real_features = fid_cli.folder_features
    def counting(folder, *args, **kwargs):
        seen.append(folder)
        return real_features(folder, *args, **kwargs)

    monkeypatch.setattr(fid_cli, "folder_features", counting)
    assert fid_cli.main(args) == 0
    assert _printed_fid(capsys) == pytest.approx(cold, rel=1e-9)
    assert seen == [folders[0]]  # only the first (generated) folder was read again
    assert not list(cache.glob("*.tmp"))


# ------------------------------------------------------------------------------------------ Frechet distance vs scipy
def _cov(eigenvalues, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigenvalues),) * 2))
    return (q * eigenvalues) @ q.T


@pytest.mark.parametrize("eigs", [np.linspace(0.5, 2.0, 64), np.logspace(-10, 0, 64)], ids=["well", "ill"])
def test_frechet_matches_scipy_sqrtm(eigs):
    rng = np.random.default_rng(0)
    s1, s2 = _cov(eigs, 1), _cov(eigs[::-1], 2)
    mu1, mu2 = rng.normal(size=64), rng.normal(size=64)
    ref = pfid.calculate_frechet_distance(mu1, s1, mu2, s2)  # scipy.linalg.sqrtm-based
    assert F.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-7)
    np.testing.assert_allclose(F.sqrtm_psd(torch.from_numpy(s1)).numpy(), scipy.linalg.sqrtm(s1).real, atol=1e-7)


def test_rank_deficient_covariances_all_routes_agree():
    """Fewer samples than dims (every small validation set): eigen route, low-rank SVD route and scipy agree."""
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(20, 128, generator=g), torch.randn(30, 128, generator=g) * 1.5 + 0.3
    eig = F.frechet_distance(*F.feature_stats(f1), *F.feature_stats(f2))
    low_rank = F.fid_from_features(f1, f2)
    mu1, s1 = np.mean(f1.double().numpy(), 0), np.cov(f1.double().numpy(), rowvar=False)
    mu2, s2 = np.mean(f2.double().numpy(), 0), np.cov(f2.double().numpy(), rowvar=False)
    # The low-rank route is exact; the eigen route adds sqrt(round-off) per null eigenvalue (~1e-8 relative).
    assert low_rank == pytest.approx(eig, rel=1e-6)
    assert eig == pytest.approx(pfid.calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-4)


def test_frechet_of_identical_statistics_is_zero():
    s = _cov(np.logspace(-8, 0, 32), 3)
    mu = np.ones(32)
    assert abs(F.frechet_distance(mu, s, mu, s)) < 1e-8


# --------------------------------------------------------------------------------------------------- weights file
def test_missing_weights_names_file_and_folder_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(FileNotFoundError) as err:
        inception.InceptionExtractor()
    assert inception.WEIGHTS_FILE in str(err.value) and str(tmp_path / "hub" / "checkpoints") in str(err.value)
    with pytest.raises(FileNotFoundError, match="elsewhere.pth"):
        inception.InceptionExtractor(weights=tmp_path / "elsewhere.pth")


def test_weights_load_with_weights_only(torch_home, monkeypatch):
    calls = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or original(*a, **k))
    inception.InceptionExtractor(dims=64)
    assert calls and all(k.get("weights_only") is True for k in calls)


def test_cli_missing_weights_is_an_error_not_a_hang(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert fid_cli.main([*folders]) == 2
    assert inception.WEIGHTS_FILE in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- refusals and .npz
def test_min_samples_refused():
    with pytest.raises(ValueError, match="min_samples=50"):
        F.check_min_samples(n_fake=49, n_real=100, min_samples=50)
    F.check_min_samples(n_fake=50, n_real=50, min_samples=50)


def test_suite_refuses_before_extracting(torch_home, monkeypatch):
    suite = MetricSuite(metrics=("fid",), fid_dims=64, min_samples=8)
    monkeypatch.setattr(F, "extract_features", lambda *a, **k: pytest.fail("extracted before refusing"))
    with pytest.raises(ValueError, match="min_samples"):
        suite(torch.zeros(4, 1, 32, 32), torch.zeros(20, 1, 32, 32))


def test_stats_roundtrip_keeps_provenance(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3)
    F.save_stats(tmp_path / "s.npz", mu, sigma, {"dims": "3"})
    mu2, sigma2, prov = F.load_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    assert prov == {"dims": "3"}


def test_reference_cache_is_atomic_and_keyed(tmp_path):
    cache = ReferenceCache(tmp_path)
    k1, k2 = cache.key({"a": 1, "b": "x"}), cache.key({"b": "x", "a": 1})
    assert k1 == k2 and cache.key({"a": 2, "b": "x"}) != k1
    assert cache.load(k1) is None
    cache.save(k1, {"feat.2d": np.ones((2, 1, 3), np.float32)}, {"a": 1})
    np.testing.assert_array_equal(cache.load(k1)["feat.2d"], np.ones((2, 1, 3)))
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npz"]  # no temporary files left
