"""Pixel-space metrics: SSIM/PSNR/MAE vs scikit-image and numpy, MS-SSIM diversity, memorization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from synthmed.metrics import names
from synthmed.metrics.diversity import ms_ssim_config, ms_ssim_diversity
from synthmed.metrics.memorization import memorization, nearest_neighbours
from synthmed.metrics.reconstruction import mae, psnr, reconstruction_metrics, ssim


def _pair(shape, noise=0.3, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(shape, generator=g) * 2 - 1) * scale
    pred = (target + noise * scale * torch.randn(shape, generator=g)).clamp(-scale, scale)
    return pred, target


def _sk_ssim(p, t, data_range, full=False):
    return sk_ssim(p.double().numpy(), t.double().numpy(), data_range=data_range, gaussian_weights=True, sigma=1.5,
                   use_sample_covariance=False, full=full)


# ------------------------------------------------------------------------------------------------- reconstruction
@pytest.mark.parametrize(("shape", "data_range"), [((3, 1, 32, 32), 2.0), ((2, 1, 16, 16, 16), 2.0),
                                                    ((2, 1, 24, 24), 400.0)], ids=["2d", "3d", "2d-hu-window"])
def test_ssim_psnr_mae_match_skimage_and_numpy(shape, data_range):
    pred, target = _pair(shape, scale=data_range / 2)
    ours_ssim, ours_psnr, ours_mae = ssim(pred, target, data_range), psnr(pred, target, data_range), mae(pred, target)
    for i in range(shape[0]):
        p, t = pred[i, 0], target[i, 0]
        assert ours_ssim[i] == pytest.approx(_sk_ssim(p, t, data_range), abs=1e-4)
        assert ours_psnr[i] == pytest.approx(sk_psnr(t.numpy(), p.numpy(), data_range=data_range), abs=1e-3)
        assert ours_mae[i] == pytest.approx(np.abs(p.numpy() - t.numpy()).mean(), rel=1e-5)


def test_masked_metrics_average_inside_the_mask():
    pred, target = _pair((2, 1, 32, 32), seed=1)
    mask = torch.zeros_like(pred, dtype=torch.bool)
    mask[..., 8:24, 4:20] = True
    _, sk_map = _sk_ssim(pred[0, 0], target[0, 0], 2.0, full=True)
    crop = (slice(5, -5), slice(5, -5))  # border where the 11-wide window reads padding
    expected = sk_map[crop][mask[0, 0].numpy()[crop]].mean()
    assert ssim(pred, target, 2.0, mask)[0] == pytest.approx(expected, abs=1e-4)
    p, t, m = pred[0, 0].numpy(), target[0, 0].numpy(), mask[0, 0].numpy()
    mse = ((p - t)[m] ** 2).mean()
    assert psnr(pred, target, 2.0, mask)[0] == pytest.approx(10 * np.log10(4.0 / mse), rel=1e-5)
    assert mae(pred, target, mask)[0] == pytest.approx(np.abs(p - t)[m].mean(), rel=1e-5)


def test_reconstruction_keys_and_checks():
    pred, target = _pair((2, 1, 16, 16))
    assert set(reconstruction_metrics(pred, target)) == {names.SSIM, names.PSNR, names.MAE}
    with pytest.raises(ValueError, match="data_range"):
        ssim(pred, target, data_range=0)
    with pytest.raises(ValueError, match="mask"):
        mae(pred, target, mask=torch.ones(2, 1, 8, 8))


# ------------------------------------------------------------------------------------------------------- diversity
@pytest.mark.parametrize("spatial", [(16, 16), (64, 64), (16, 16, 16), (32, 32, 32)])
def test_ms_ssim_diversity_identical_high_noise_low(spatial):
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(6, 1, *spatial, generator=g) * 2 - 1
    identical = noise[:1].expand_as(noise).contiguous()
    same, cfg = ms_ssim_diversity(identical, n_pairs=10)
    diverse, _ = ms_ssim_diversity(noise, n_pairs=10)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert diverse < 0.1
    assert cfg.kernel_size <= min(spatial) // 2 ** (len(cfg.betas) - 1)  # coarsest scale still holds the window


def test_ms_ssim_config_is_standard_when_the_image_allows():
    cfg = ms_ssim_config((256, 256))
    assert (cfg.kernel_size, cfg.sigma, len(cfg.betas)) == (11, 1.5, 5)
    assert ms_ssim_config((64, 64)).kernel_size == 11 and len(ms_ssim_config((64, 64)).betas) == 3
    assert sum(ms_ssim_config((64, 64)).betas) == pytest.approx(1.0, abs=1e-5)


def test_ms_ssim_diversity_at_full_size_equals_torchmetrics_default():
    """At 256 px the chosen setting is torchmetrics' (and Wang et al.'s) default, so values coincide."""
    x = torch.rand(2, 1, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = (x + 0.2 * torch.rand(2, 1, 256, 256, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    value, _ = ms_ssim_diversity(torch.cat([x[:1], y[:1]]), n_pairs=4)
    reference = multiscale_structural_similarity_index_measure(x[:1], y[:1], data_range=2.0)
    assert value == pytest.approx(float(reference), abs=1e-3)


# ---------------------------------------------------------------------------------------------------- memorization
def _images(n, seed):
    """Smooth random images (low-frequency noise upsampled), closer to real anatomy than white noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 1, 8, 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear").tanh()


def test_memorization_flags_copies_and_passes_fresh_samples():
    train, heldout = _images(60, seed=0), _images(40, seed=1)
    jitter = 0.01 * torch.randn(20, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    copies = train[torch.arange(0, 40, 2)] + jitter  # near-copies of every other training image
    flagged = memorization(copies, train, heldout, quantile=0.05, top_k=3)
    assert flagged.rate == 1.0
    assert all(j == 2 * i for i, j, _ in flagged.top_pairs)  # each copy found its own source image
    assert (flagged.samples.correlation > 0.99).all()

    fresh = memorization(_images(40, seed=3), train, heldout, quantile=0.05)
    assert fresh.rate <= 0.2  # ~ the calibration quantile (0.05) up to sampling noise at n = 40
    assert fresh.threshold == flagged.threshold > 0


def test_nearest_neighbours_exact_copy_has_zero_distance():
    ref = _images(30, seed=4)
    nn = nearest_neighbours(ref[[7, 3]], ref)
    assert nn.index.tolist() == [7, 3]
    assert nn.distance.max() < 1e-6 and nn.correlation.min() > 0.999999
