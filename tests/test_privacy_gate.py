"""Known answers for the privacy gate on 16 px phantoms: a copier (training images, shifted, noised, re-windowed,
flipped) is refused, an oracle (fresh subjects of another seed) passes at about the calibration rate, `filter` returns
exactly n unflagged images, a collapsed generator trips the cap; the rate test against scipy/statsmodels."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from synthmed.data.phantom import PhantomDataset
from synthmed.evaluation.gate import GateRefused, gated_batch
from synthmed.metrics import domain as D
from synthmed.metrics.privacy_gate import GateSettings, PrivacyGate, detectable_rate, rate_test

SIZE, N_TRAIN, N = 16, 128, 64


def phantoms(split: str, n: int, seed: int = 0) -> torch.Tensor:
    return PhantomDataset(split, 2, SIZE, n_train=n, n_val=n, n_test=n, seed=seed).image


@pytest.fixture(scope="module")
def data():
    train, heldout = phantoms("train", N_TRAIN), phantoms("val", N)
    oracle = phantoms("test", N, seed=1)  # other subjects, other seed: the ideal generator
    encoder = D.EncoderBank(D.EncoderSettings(channels=(4, 8), steps=30, batch_size=16)).get("domain", train)
    gate = PrivacyGate(train, heldout, GateSettings(), lambda x: encoder.outputs(x)["features"])
    return {"train": train, "oracle": oracle, "gate": gate}


def copier(train: torch.Tensor, kind: str, n: int = 16) -> torch.Tensor:
    """Training images as a memorizing model returns them: exact, shifted, noised, re-windowed or flipped."""
    x = train[:n].clone()
    gen = torch.Generator().manual_seed(3)
    return {"exact": x, "shift": torch.roll(x, (1, -2), (2, 3)),
            "noise": (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(-1, 1),
            "intensity": (0.9 * x + 0.05).clamp(-1, 1), "flip": x.flip(-1)}[kind]


@pytest.mark.parametrize("kind", ["exact", "shift", "noise", "intensity", "flip"])
def test_a_copier_is_refused_by_the_hard_rule_image_by_image(data, kind):
    gate = data["gate"]
    audit = gate.audit(copier(data["train"], kind))
    assert audit.copy_flag.all() and not audit.passed
    assert torch.equal(audit.copy_index, torch.arange(16))  # each found its own source
    assert "near-exact copies" in audit.reasons()[0]
    single = gate.audit(copier(data["train"], kind, n=1))  # a batch of one has no rate-test power ...
    assert not single.tests[0].powered and not single.passed  # ... the hard rule still refuses it


def test_an_oracle_passes_at_about_the_calibration_rate(data):
    """Five batches of fresh subjects (seeds 1-5). They share one calibration, whose true rate is itself random
    (the beta-binomial null): here the embedding detector flags 3-9 of 64 where 3/65 of 64 = 3 is expected."""
    gate = data["gate"]
    c = gate.calibration
    lo, hi = stats.betabinom.interval(0.99, N, c.rank, c.n_heldout + 1 - c.rank)  # a non-copying model's count
    audits = [gate.audit(data["oracle"] if seed == 1 else phantoms("test", N, seed=seed)) for seed in range(1, 6)]
    for audit in audits:
        assert not audit.copy_flag.any()  # a fresh subject never trips the hard rule
        assert all(lo <= int(flags.sum()) <= hi for flags in (audit.pixel_flag, audit.embed_flag))
        assert audit.max_per_train <= audit.cap
    assert sum(a.passed for a in audits) >= 4  # at level 0.05 per batch, 5 of 5 in expectation
    assert c.copy_threshold >= c.heldout_max_copy_score and c.copy_recall >= 0.9  # copies caught, new subjects not


def test_the_rate_test_and_its_power_match_scipy_and_statsmodels():
    t = rate_test("pixel", 12, 64, 3, 64, 0.025, 0.8)  # threshold: 3rd of 64 held-out values
    assert t.expected_rate == pytest.approx(3 / 65)
    # Beta-binomial null by hand: P(X >= 12) = sum_k C(n, k) B(k + a, n - k + b) / B(a, b), a = 3, b = 62
    lbeta = lambda x, y: math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)  # noqa: E731
    p = sum(math.comb(64, k) * math.exp(lbeta(k + 3, 64 - k + 62) - lbeta(3, 62)) for k in range(12, 65))
    assert t.p_value == pytest.approx(p, rel=1e-9) and t.rejects
    plain = sum(math.comb(64, k) * (3 / 65) ** k * (62 / 65) ** (64 - k) for k in range(12, 65))
    assert t.binomial_p_value == pytest.approx(plain, rel=1e-9) and t.binomial_p_value < t.p_value
    assert t.rate_ci95 == pytest.approx(proportion_confint(12, 64, 0.05, method="beta"), rel=1e-6)
    null_sf = lambda k: stats.betabinom.sf(k - 1, 64, 3, 62)  # noqa: E731
    rate = detectable_rate(64, null_sf, 0.025, 0.8)
    k = next(k for k in range(65) if null_sf(k) <= 0.025)  # smallest rejecting count
    assert stats.binom.sf(k - 1, 64, rate) == pytest.approx(0.8, abs=1e-6)
    assert stats.binom.sf(k - 1, 64, rate - 0.01) < 0.8
    assert not rate_test("pixel", 0, 3, 3, 64, 0.025, 0.8).powered
    assert detectable_rate(1, lambda k: stats.binom.sf(k - 1, 1, 0.05), 0.025) is None  # 1 of 1: p = 0.05


def test_filter_returns_exactly_n_images_none_flagged(data):
    gate, train, oracle = data["gate"], data["train"], data["oracle"]
    pool = torch.cat([oracle, phantoms("test", N, seed=2)])

    def draw(indices, positions):  # every third draw is a training image: a partly memorizing model
        return torch.stack([train[i] if i % 3 == 0 else pool[i % len(pool)] for i in indices])

    with pytest.raises(GateRefused, match=r"of 20 samples flagged.*near-exact copies.*Nothing was written"):
        gated_batch(draw, 20, gate, "refuse")
    batch = gated_batch(draw, 20, gate, "filter")
    assert len(batch.images) == 20 and len(set(batch.indices)) == 20
    assert not gate.audit(batch.images).flagged.any()
    assert batch.report["filter"]["dropped"] >= 7 and batch.report["n_flagged"] == 0  # 7 copies among 0..19
    assert not batch.report["filter"]["first_draw"]["passed"]
    for pos, index in enumerate(batch.indices):  # each kept image is the draw its index says
        torch.testing.assert_close(batch.images[pos], draw([index], [pos])[0])
    warned = gated_batch(draw, 20, gate, "warn")
    assert len(warned.images) == 20 and {0, 3, 6} <= set(warned.report["flagged_samples"])


def test_a_collapsed_generator_trips_the_cap(data):
    gate, train = data["gate"], data["train"]
    gen = torch.Generator().manual_seed(0)
    collapsed = (train[5:6] + 0.08 * torch.randn((32, *train.shape[1:]), generator=gen)).clamp(-1, 1)
    audit = gate.audit(collapsed)
    assert audit.max_per_train > audit.cap and not audit.passed
    assert any("share one nearest training image" in r for r in audit.reasons())
    mixed = torch.cat([data["oracle"][:28], collapsed[:4]])  # four near one patient in a batch of 32: under the cap
    assert gate.audit(mixed).max_per_train <= gate.cap(32)


def test_pure_noise_is_not_a_collapse(data):
    """Noise is nearest to one bland "hub" training image without resembling it: the cap counts near samples only."""
    noise = torch.rand((32, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(0)) * 2 - 1
    audit = data["gate"].audit(noise)
    assert audit.passed and audit.max_per_train <= 1


def test_copy_score_blocks_are_bounded_by_memory_not_by_a_query_count(monkeypatch):
    """Each block of queries expands to every shift and flip (250 variants in 3D): a fixed 64 queries per block grew
    the peak memory ~11 MiB per query at 12^3 (and would need ~1.7 GB per query at 64^3). Blocks now hold at most
    ``_BLOCK_ELEMENTS`` variant voxels, and the scores do not depend on the blocking."""
    import synthmed.metrics.privacy_gate as pg

    gen = torch.Generator().manual_seed(0)
    queries, train = (torch.rand((n, 1, 8, 8, 8), generator=gen) * 2 - 1 for n in (20, 6))
    reference = pg.copy_score(queries, train, 2, True)
    sizes, variants = [], pg._variants
    monkeypatch.setattr(pg, "_variants", lambda x, *a: sizes.append(x.shape[0]) or variants(x, *a))
    monkeypatch.setattr(pg, "_BLOCK_ELEMENTS", 4 * 250 * 8 ** 3)  # room for four queries' variants
    blocked = pg.copy_score(queries, train, 2, True)
    assert sizes == [4] * 5  # 20 queries in blocks of 4
    torch.testing.assert_close(blocked[0], reference[0])
    assert torch.equal(blocked[1], reference[1])


def test_a_quantile_past_the_last_held_out_value_is_refused_by_key():
    """round(0.95 x (9 + 1)) = 10 of 9 held-out values: calibration crashed with an IndexError."""
    gen = torch.Generator().manual_seed(0)
    train, heldout = (torch.rand((n, 1, 8, 8), generator=gen) * 2 - 1 for n in (10, 9))
    with pytest.raises(ValueError, match=r"privacy\.quantile=0\.95: with 9 held-out .* the 10\. most extreme of 9"):
        PrivacyGate(train, heldout, GateSettings(quantile=0.95, n_copies=4))
    assert PrivacyGate(train, heldout, GateSettings(quantile=0.9, n_copies=4)).calibration.rank == 9  # the last one
