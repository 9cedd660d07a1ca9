"""KID, precision/recall, density/coverage on small feature sets whose answers can be checked by hand."""

from __future__ import annotations

import pytest
import torch

from synthmed.metrics.features import density_coverage, kid, kth_neighbour_radii, precision_recall


def _gauss(n, d=8, shift=0.0, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


# ----------------------------------------------------------------------------------------------------------- KID
def test_kid_hand_computed():
    """m = 3, D = 2, k(a, b) = (a.b / 2 + 1)^3; subset = whole set, so every subset gives the same value.

    Off-diagonal sums: K_xx = 2 (1 + 3.375 + 3.375) = 15.5, K_yy = 20, K_xy = 47;
    MMD^2 = (15.5 + 20) / (3 * 2) - 2 * 47 / 9 = -163/36 (the unbiased estimate may be negative).
    """
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 0.0]])
    mean, std = kid(x, y, subsets=5, subset_size=100)  # subset size clipped to 3
    assert mean == pytest.approx(-163 / 36, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_same_distribution_near_zero_shifted_not():
    same, _ = kid(_gauss(300, seed=1), _gauss(300, seed=2), subsets=20, subset_size=100)
    shifted, _ = kid(_gauss(300, seed=1), _gauss(300, shift=1.0, seed=2), subsets=20, subset_size=100)
    assert abs(same) < 0.02 * shifted
    assert shifted > 0.1


def test_kid_is_seeded_and_validates():
    a, b = _gauss(50, seed=3), _gauss(50, shift=0.5, seed=4)
    assert kid(a, b, subsets=10, subset_size=20, seed=7) == kid(a, b, subsets=10, subset_size=20, seed=7)
    with pytest.raises(ValueError, match="real"):
        kid(a[:1], b)
    with pytest.raises(ValueError, match="dims differ"):
        kid(a, b[:, :4])


# --------------------------------------------------------------------------------------------- precision / recall
def test_identical_sets_are_perfect():
    x = _gauss(40)
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)
    assert density_coverage(x, x.clone(), k=3)[1] == 1.0


def test_disjoint_far_sets_are_zero():
    real, fake = _gauss(40, seed=1), _gauss(40, shift=100.0, seed=2)
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)
    assert density_coverage(real, fake, k=3) == (0.0, 0.0)


def test_one_dimensional_hand_case():
    """real = 0..4 (k = 1 radii all 1), fake = {0.5, 10} (k = 1 radii 9.5).

    precision: 0.5 is within 1 of real 0 -> in; 10 is not -> 1/2.  recall: every real point is within 9.5 of 0.5 -> 1.
    density: 0.5 lies strictly inside the balls of 0 and 1, 10 in none -> (2 + 0) / (k * 2) = 1.
    coverage: the balls of 0 and 1 contain a fake point, those of 2, 3, 4 do not -> 2/5.
    """
    real = torch.arange(5.0).unsqueeze(1)
    fake = torch.tensor([[0.5], [10.0]])
    assert kth_neighbour_radii(real, 1).tolist() == [1.0] * 5
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert density_coverage(real, fake, k=1) == pytest.approx((1.0, 0.4))


def test_mode_collapse_keeps_precision_loses_recall():
    real = _gauss(60, seed=5)
    fake = real[:3].repeat(20, 1) + 1e-3 * _gauss(60, seed=6)  # three modes copied: realistic but not diverse
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == 1.0 and recall < 0.3
    assert density_coverage(real, fake, k=3)[1] < 0.2


def test_k_must_leave_neighbours():
    with pytest.raises(ValueError, match="real"):
        precision_recall(_gauss(3), _gauss(10), k=3)
