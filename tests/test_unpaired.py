"""Unpaired translation (issue 19): the unpaired phantom mode and dataset=unpaired, the structure and lesion
preservation metrics (against scipy and fixtures whose lesions are planted by construction), CycleGAN's two
directions and `synthmed translate direction=b2a`, and a CPU learning test on held-out paired HU MAE."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats

from synthmed.config import instantiate
from synthmed.data.image_folder import ImageFolderDataset
from synthmed.data.phantom import PhantomDataset
from synthmed.data.unpaired import UnpairedDataset
from synthmed.evaluation.step import lesion_scores, lesion_skip_reason, target_labels
from synthmed.metrics import names
from synthmed.metrics.directions import direction as better
from synthmed.metrics.domain import one_thread
from synthmed.metrics.lesions import BRAIN_WINDOW_HU, Rate, lesion_rates, lesion_reader, read_lesions, summary_line
from synthmed.metrics.structure import edge_ssim, gradient_correlation
from synthmed.metrics.suite import MetricSuite
from synthmed.metrics.translation import translation_metrics
from tests.conftest import compose_train

LESIONS = dict(spatial_dims=2, size=32, n_train=192, n_val=96, lesion_radius=(0.1, 0.15))  # lesions a reader sees


# ---- data ----------------------------------------------------------------------------------------------------------
def test_unpaired_phantom_trains_on_other_subjects_and_keeps_val_paired():
    kw = dict(spatial_dims=2, size=16, n_train=40, n_val=8, n_test=8)
    paired = PhantomDataset("train", **kw)
    unpaired = PhantomDataset("train", **kw, unpaired=True, target_lesion_prevalence=0.5)
    assert torch.equal(unpaired.image, paired.image)  # the MRs are the paired data set's ...
    assert not any(torch.equal(unpaired.target[i], paired.target[j]) for i in range(40) for j in range(40))  # ... CTs not
    assert unpaired.target_labels().sum() == 20 and unpaired.covariates()["label"].sum() == 4  # 50 % vs 10 %
    assert unpaired.paired_truth is False and paired.paired_truth is True
    assert unpaired[3]["target_label"] == unpaired.target_labels()[3] and "target_label" not in paired[3]
    val = PhantomDataset("val", **kw, unpaired=True, target_lesion_prevalence=0.5)
    assert val.paired_truth and torch.equal(val.target, PhantomDataset("val", **kw).target)  # truth to score
    # Default data sets keep their fingerprint; the unpaired mode has its own.
    assert "unpaired" not in paired.settings and unpaired.fingerprint != paired.fingerprint
    with pytest.raises(ValueError, match="target_lesion_prevalence needs unpaired=True"):
        PhantomDataset("train", **kw, target_lesion_prevalence=0.4)
    with pytest.raises(ValueError, match="target_lesion_prevalence must be"):
        PhantomDataset("train", **kw, unpaired=True, target_lesion_prevalence=1.5)


def _write_domain(folder: Path, value: int, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(np.full((8, 8), value + i, np.uint8)).save(paths[-1])
    return paths


def test_unpaired_dataset_from_two_roots_or_a_manifest_with_a_domain_column(tmp_path, monkeypatch):
    a, b = _write_domain(tmp_path / "mr", 10, 5), _write_domain(tmp_path / "ct", 100, 3)
    side = functools.partial(ImageFolderDataset, size=[8, 8], val_fraction=0.0, test_fraction=0.0,
                             cache_dir=str(tmp_path / "cache"))
    roots = UnpairedDataset("train", functools.partial(side, root=str(tmp_path / "mr")),
                            functools.partial(side, root=str(tmp_path / "ct")))
    assert len(roots) == 5 and roots.paired_truth is False
    pixel = lambda t: round((float(t.flatten()[0]) + 1) / 2 * 255)
    sources = [pixel(roots[i]["image"]) for i in range(5)]
    targets = [pixel(roots[i]["target"]) for i in range(5)]
    assert sources == [10, 11, 12, 13, 14] and set(targets) == {100, 101, 102}  # every CT is met
    manifest = tmp_path / "all.csv"
    with open(manifest, "w", newline="") as f:
        rows = [("image", "domain")] + [(p.relative_to(tmp_path), "mr") for p in a] + \
            [(p.relative_to(tmp_path), "ct") for p in b]
        csv.writer(f).writerows(rows)
    monkeypatch.chdir(tmp_path)  # a relative cache_dir, as the config's ${paths.cache_dir}/data
    mixed = UnpairedDataset("train", side, side, manifest=str(manifest), domains=["mr", "ct"], cache_dir="cache")
    assert [pixel(mixed[i]["image"]) for i in range(5)] == sources  # the manifest's rows split by domain
    assert sorted(pixel(mixed[i]["target"]) for i in range(3)) == sorted(targets[:3])
    with pytest.raises(ValueError, match=r"dataset.target_root"):  # two-roots mode with a root unset (null)
        UnpairedDataset("train", functools.partial(side, root=str(tmp_path / "mr")), functools.partial(side, root=None))
    with pytest.raises(ValueError, match=r"no row with domain in \['xray'\]"):
        UnpairedDataset("train", side, side, manifest=str(manifest), domains=["mr", "xray"],
                        cache_dir=str(tmp_path / "cache"))


# ---- metrics -------------------------------------------------------------------------------------------------------
def test_edge_metrics_ignore_contrast_inversion_and_see_invented_edges():
    head = PhantomDataset("val", 2, size=32, n_val=4).target
    flat = torch.full_like(head, -1.0)
    assert torch.allclose(gradient_correlation(head, -3.0 * head + 0.5), torch.ones(4), atol=1e-4)  # inverted CT
    assert torch.allclose(edge_ssim(head, -head), torch.ones(4), atol=1e-4)
    blob = flat.clone()
    blob[..., 10:20, 10:20] = 1.0  # edges where the input (a flat image with a different blob) has none
    moved = flat.clone()
    moved[..., 2:8, 20:30] = 1.0
    assert (edge_ssim(blob, moved) < 0.5).all() and (gradient_correlation(blob, moved) < 0.1).all()


def test_wilson_interval_matches_scipy():
    for k, n in ((0, 12), (3, 17), (40, 40)):
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert np.allclose(Rate(k, n).ci, (ci.low, ci.high)) and Rate(k, n).value == k / n
    assert np.isnan(Rate(0, 0).value)


LESION_DATA = ["model=cyclegan", "dataset=phantom2d_unpaired", "dataset.size=32",
               "dataset.datamodule.dataset.n_train=192", "dataset.datamodule.dataset.n_val=96",
               "dataset.datamodule.dataset.lesion_radius=[0.1,0.15]",
               "dataset.datamodule.dataset.target_lesion_prevalence=0.4"]  # the data of LESIONS, through the config


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory):
    """The unpaired phantom datamodule of LESIONS: 40 % lesion prevalence among the training CTs, 10 % among MRs."""
    cfg = compose_train(tmp_path_factory.mktemp("lesion_data"), LESION_DATA)
    return instantiate(cfg.dataset.datamodule, "dataset.datamodule")


@pytest.fixture(scope="module")
def suite():
    """A metric suite whose encoder bank holds the reader below: the final evaluation finds it there, untrained."""
    return MetricSuite(metrics=("ms_ssim_diversity",), domain_steps=200)


@pytest.fixture(scope="module")
def reader(lesion_data, suite):
    """The CT-domain lesion reader of the unpaired phantom (40 % lesion prevalence among the CTs), brain window."""
    train = lesion_data.split("train")
    assert torch.equal(train.target, PhantomDataset("train", **LESIONS, unpaired=True,
                                                    target_lesion_prevalence=0.4).target)
    return lesion_reader(suite.encoders, train.target, torch.as_tensor(train.target_labels()),
                         train.target_intensity, BRAIN_WINDOW_HU)


def test_lesion_rates_detect_planted_and_erased_lesions(reader):
    # Same val subjects rendered three ways (same anatomy and noise; only whose lesions are drawn differs): the
    # truth, every subject with lesions pasted in (a translator that invents them) and none (one that erases them).
    truth, planted, erased = (PhantomDataset("val", **LESIONS, lesion_prevalence=p) for p in (0.1, 1.0, 0.0))
    labels = torch.as_tensor(truth.covariates()["label"])
    sick = labels == 1
    assert torch.equal(planted.target[sick], truth.target[sick]) and torch.equal(erased.target[~sick],
                                                                                  truth.target[~sick])
    assert not torch.equal(planted.target[~sick], truth.target[~sick])
    window, hu = BRAIN_WINDOW_HU, truth.target_intensity
    oracle = lesion_rates(reader, truth.target, labels, hu, window)
    invented = lesion_rates(reader, planted.target, labels, hu, window)
    removed = lesion_rates(reader, erased.target, labels, hu, window)
    assert oracle.appeared.n == 86 and oracle.preserved.n == 10  # round(0.1 * 96) lesion subjects
    assert oracle.appeared.ci[1] < invented.appeared.ci[0], (oracle.appeared, invented.appeared)  # detected
    assert invented.appeared.value - oracle.appeared.value > 0.5
    assert removed.preserved.value < oracle.preserved.value - 0.5 and oracle.preserved.value >= 0.7
    # The rates are the reader's reads, split by the input's label.
    read = read_lesions(reader, planted.target, hu, window)
    assert invented.appeared.k == int(read[~sick].sum()) and invented.preserved.k == int(read[sick].sum())
    rates = (names.LESION_PRESERVED_RATE, names.LESION_APPEARED_RATE)
    assert set(oracle.metrics()) == {*rates, *map(names.ci_low, rates), *map(names.ci_high, rates),
                                     names.LESION_N_POSITIVE, names.LESION_N_NEGATIVE}


def test_final_evaluation_reads_lesion_rates_of_known_translators(lesion_data, suite, reader):
    """What a translator's final evaluation (and `synthmed evaluate`) logs: an oracle translator (its outputs are
    the real paired CTs) scores exactly the reader's own rates; one that pastes lesions into every output is told
    apart by disjoint intervals; rates are the reader's reads with scipy's Wilson interval, over distinct inputs."""
    model = SimpleNamespace(requires_source=True, direction="a2b")
    truth, hu = lesion_data.images("val"), lesion_data.target_intensity
    labels = torch.as_tensor(lesion_data.split("val").covariates()["label"])
    oracle, tags = lesion_scores(model, lesion_data, torch.cat([truth, truth]), "val", suite)  # sources repeat
    assert oracle[names.LESION_N_POSITIVE] == 10 and oracle[names.LESION_N_NEGATIVE] == 86  # each input once
    read = read_lesions(reader, truth, hu, BRAIN_WINDOW_HU)
    for key, has in ((names.LESION_PRESERVED_RATE, labels == 1), (names.LESION_APPEARED_RATE, labels == 0)):
        assert oracle[key] == oracle[names.on_real(key)]  # outputs = real targets: the reader's own rates
        k, n = int(read[has].sum()), int(has.sum())
        wilson = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert oracle[key] == k / n
        assert (oracle[names.ci_low(key)], oracle[names.ci_high(key)]) == pytest.approx((wilson.low, wilson.high))
    planted = PhantomDataset("val", **LESIONS, lesion_prevalence=1.0).target  # lesions pasted into every output
    invented, _ = lesion_scores(model, lesion_data, planted, "val", suite)
    appeared = names.LESION_APPEARED_RATE
    assert oracle[names.ci_high(appeared)] < invented[names.ci_low(appeared)], (oracle[appeared], invented[appeared])
    assert tags["lesion_reader.window"] == "[0.0, 80.0] HU" and tags["lesion_reader.n_train_lesion"] == "77"
    assert tags["lesion_reader.weights_sha256"] == reader.sha256  # the fixture's reader, found in the suite's bank
    line = summary_line(invented)
    assert f"appeared {invented[appeared]:.2f} ({round(invented[appeared] * 86)}/86; 95 % CI" in line
    healthy_only = {**invented, names.LESION_N_POSITIVE: 0.0, names.LESION_PRESERVED_RATE: float("nan")}
    assert summary_line(healthy_only).startswith("preserved - (0/0); appeared")


def test_lesion_rates_are_skipped_with_a_reason_where_no_reader_can_exist():
    hu, some = {"unit": "HU"}, torch.tensor([0, 1, 0])
    assert lesion_skip_reason(hu, some, some, True) is None
    for args, match in (((None, some, some, True), "not a translation data set"),
                        ((hu, some, None, True), "carry no lesion labels"),
                        ((hu, some, torch.zeros(3), True), "with and without a lesion, got 0 of 3"),
                        ((hu, None, some, True), "sources carry no lesion label")):
        assert match in lesion_skip_reason(*args)
    model = SimpleNamespace(requires_source=True, direction="b2a")  # the target domain would then be A's
    assert lesion_scores(model, None, torch.zeros(1), "val", None) == ({}, {})
    assert better(names.LESION_APPEARED_RATE) == "minimize" and better(names.LESION_PRESERVED_RATE) == "maximize"



class _Pairs(list):
    """Items of a registered-pair data set (no `target_labels()`): source and target are one subject."""

    paired_truth = True


def test_target_labels_come_from_the_data_set_or_from_registered_pairs():
    item = {"image": torch.zeros(1, 4, 4), "target": torch.zeros(1, 4, 4)}
    assert target_labels(_Pairs([{**item, "label": 1}, {**item, "label": 0}])).tolist() == [1, 0]
    assert target_labels(_Pairs([item, item])) is None  # unlabelled pairs: no reader
    unpaired = _Pairs([{**item, "label": 1}])
    unpaired.paired_truth = False  # a source's label says nothing about another subject's target
    assert target_labels(unpaired) is None
    phantom = PhantomDataset("train", 2, size=16, n_train=10, unpaired=True, target_lesion_prevalence=0.5)
    assert target_labels(phantom).tolist() == phantom.target_labels().tolist() and int(target_labels(phantom).sum()) == 5


# ---- the model -----------------------------------------------------------------------------------------------------
TINY = ["model=cyclegan", "dataset=phantom2d_unpaired", "debug=smoke", "dataset.size=16",
        "model.generator.features=[8,8,8,16,16,8]", "model.discriminator.channels=8", "model.pool_size=4"]


def test_cyclegan_translates_both_ways_and_checks_its_arguments(tmp_path):
    model = instantiate(compose_train(tmp_path, TINY).model, "model")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    a2b = model.sample(2, cond={"source": x})
    model.set_direction("b2a")
    b2a = model.sample(2, cond={"source": x})
    assert not torch.allclose(a2b, b2a)  # two generators
    with pytest.raises(ValueError, match="direction must be one of"):
        model.set_direction("c2d")
    for override, match in (("model.lambda_cycle=-1", "lambda_cycle"), ("model.loss=wasserstein", "loss"),
                            ("model.pool_size=-1", "pool_size"), ("model.source_channels=2", "lambda_identity")):
        with pytest.raises(Exception, match=match):
            instantiate(compose_train(tmp_path, [*TINY, override]).model, "model")


def test_cyclegan_trains_with_every_term_under_bf16_mixed_precision(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "model.lambda_structure=1", "model.ema_decay=0.9",
                                   "dataset.datamodule.dataset.n_train=16"])
    pl.seed_everything(0)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    model = instantiate(cfg.model, "model")
    before = {k: v.detach().clone() for k, v in model.generators.state_dict().items()}
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    logged = trainer.logged_metrics
    assert trainer.global_step == 2  # one step per batch: the discriminators' steps are not counted
    for key in (names.TRAIN_LOSS_G, names.TRAIN_LOSS_D, names.TRAIN_LOSS_CYCLE, names.TRAIN_LOSS_IDENTITY,
                names.TRAIN_LOSS_STRUCTURE):
        assert torch.isfinite(logged[key]), key
    assert 0.0 <= float(logged[names.TRAIN_LOSS_STRUCTURE]) <= 4.0  # 2 - GC(A->B) - GC(B->A), each GC in [-1, 1]
    after = model.generators.state_dict()
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(after[k], v)]
    assert {k.split(".")[0] for k in changed} == {"a2b", "b2a"} and len(changed) > len(before) // 2
    assert len(model.pools["a"].images) == 4  # pool_size=4, filled by 2 batches of 4


def _gradient_correlation_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference GC per image `[B]`: numpy central differences, magnitude, Pearson r (numpy.corrcoef)."""
    mags = [np.hypot(*np.gradient(x[:, 0].astype(np.float64), axis=(1, 2))) for x in (a, b)]
    return np.array([np.corrcoef(ga.ravel(), gb.ravel())[0, 1] for ga, gb in zip(*mags)])


def test_structure_term_rewards_the_inputs_edges_on_the_right_pairs(tmp_path):
    """The structure term is `lambda_structure * (2 - GC(a, G_AB(a)) - GC(b, G_BA(b)))` (numpy reference): each
    generator's output is compared with its own input, the sign rewards kept edges, lambda scales it. Were an output
    compared with the other generator's input, outputs that keep their own inputs' edges would not score 0."""
    cfg = compose_train(tmp_path, [*TINY, "model.lambda_structure=0.5", "model.lambda_cycle=0"])
    model = instantiate(cfg.model, "model")
    heads = PhantomDataset("val", 2, size=16, n_val=8)
    a, b = heads.image[:4], heads.target[4:]  # unpaired: MRs of subjects 0-3, CTs of subjects 4-7
    a, b = (F.pad(x[..., 2:-2, 2:-2], (2, 2, 2, 2), value=-1.0) for x in (a, b))  # flat border: numpy's edges agree
    kept_b, kept_a = -a, 0.5 * b  # outputs with exactly their inputs' edges (contrast inverted, rescaled)
    with torch.no_grad():
        kept = float(model._generator_losses(a, b, kept_a, kept_b)[names.TRAIN_LOSS_STRUCTURE])
        swapped = float(model._generator_losses(a, b, -a, 0.5 * b)[names.TRAIN_LOSS_STRUCTURE])
    assert kept == pytest.approx(0.0, abs=1e-3)
    expected = 0.5 * (2 - _gradient_correlation_numpy(a.numpy(), b.numpy() * 0.5)
                      - _gradient_correlation_numpy(b.numpy(), -a.numpy())).mean()
    assert swapped == pytest.approx(expected, abs=1e-3) and swapped > 0.2


def test_pix2pix_learns_one_direction_and_refuses_unpaired_data(tmp_path):
    cfg = compose_train(tmp_path, [*TINY[:3], "model=pix2pix", "dataset.datamodule.dataset.n_train=8"])
    model = instantiate(cfg.model, "model")
    with pytest.raises(ValueError, match=r"direction must be one of \('a2b',\)"):
        model.set_direction("b2a")
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="use model=cyclegan"):
        trainer.fit(model, datamodule=instantiate(cfg.dataset.datamodule, "dataset.datamodule"))


@pytest.mark.slow
def test_cyclegan_learns_unpaired_mr_to_ct(tmp_path):
    """Trained on MRs and CTs of different subjects, CycleGAN beats the identity mapping and its untrained self on
    the held-out paired truth (same standard as tests/test_translation_learning.py)."""
    with one_thread():  # tiny convolutions run faster on one thread; restored for the tests that follow
        _learns_unpaired(tmp_path)


def _learns_unpaired(tmp_path) -> None:
    cfg = compose_train(tmp_path, [
        "model=cyclegan", "dataset=phantom2d_unpaired", "dataset.size=32", "dataset.datamodule.batch_size=16",
        "dataset.datamodule.dataset.n_train=256", "dataset.datamodule.dataset.n_val=32",
        "model.generator.features=[16,16,32,64,64,16]", "model.discriminator.channels=16", "model.lambda_identity=0",
        "model.optimizer.lr=1e-3", "model.optimizer_d.lr=1e-3", "model.ema_decay=0"])
    pl.seed_everything(0)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    model = instantiate(cfg.model, "model")
    assert datamodule.split("train").paired_truth is False
    source, target, window = datamodule.sources("val"), datamodule.images("val"), datamodule.target_intensity

    def score() -> dict[str, float]:
        return translation_metrics(model.sample(len(source), cond={"source": source}), target, source, window)

    before = score()
    pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
               default_root_dir=tmp_path).fit(model, datamodule=datamodule)
    after = score()
    identity = after[names.MAE_HU_IDENTITY]
    assert after[names.MAE_HU] < 0.5 * identity, f"trained {after[names.MAE_HU]:.1f} HU vs identity {identity:.1f}"
    assert after[names.MAE_HU] < 0.3 * before[names.MAE_HU], \
        f"trained {after[names.MAE_HU]:.1f} HU vs untrained {before[names.MAE_HU]:.1f}"


STEPS = 100  # 90 steps reached 99 HU (identity 267, untrained 605) on a busy machine


def test_translate_b2a_swaps_the_recorded_mappings_and_refuses_one_way_models(tmp_path):
    from synthmed.tracking.restore import Restored
    from synthmed.translate import orient

    mr, ct = {"kind": "percentile", "lower": 0.5, "upper": 99.5}, {"kind": "linear", "native_min": -1000.0,
                                                                   "native_max": 1000.0, "unit": "HU"}
    run = SimpleNamespace(info=SimpleNamespace(run_id="abc123"))
    for model_name, direction in (("cyclegan", "b2a"), ("cyclegan", "a2b"), ("pix2pix", "b2a")):
        cfg = compose_train(tmp_path, TINY if model_name == "cyclegan" else [*TINY[:3], "model=pix2pix"])
        restored = Restored(run, cfg, instantiate(cfg.model, "model"), {"intensity": mr, "target_intensity": ct}, 0)
        if model_name == "pix2pix":
            with pytest.raises(ValueError, match="translates \\['a2b'\\] only"):
                orient(restored, direction)
            continue
        orient(restored, direction)
        assert restored.model.direction == direction
        swapped = direction == "b2a"
        assert restored.dataset == ({"intensity": ct, "target_intensity": mr} if swapped else
                                    {"intensity": mr, "target_intensity": ct})


# ---- resume --------------------------------------------------------------------------------------------------------
# 16 unpaired training items, batch 4: the kill lands mid-epoch, after the pools (4 images each) are full, so the
# resumed run's first discriminator step already draws from the restored pool.
RESUME = [*TINY, "dataset.datamodule.dataset.n_train=16", "trainer.max_steps=7", "trainer.val_check_interval=3",
          "eval.n_samples=4", "eval.metrics=[ms_ssim_diversity]", "~callbacks.generation_metrics"]


@pytest.mark.slow
def test_cyclegan_killed_and_resumed_equals_uninterrupted(tmp_path, mlflow_template, monkeypatch):
    """The standard of tests/test_resume.py for CycleGAN: its image pools travel in the checkpoint (as tensors that
    load with weights_only=True), so the resumed run ends with the uninterrupted run's weights, bit for bit."""
    with one_thread():  # tiny convolutions: one thread is several times faster on a shared CPU
        _killed_and_resumed(tmp_path, mlflow_template, monkeypatch)


def _killed_and_resumed(tmp_path, mlflow_template, monkeypatch) -> None:
    import synthmed.train as train_module
    from tests.test_resume import KILL_AT, SigtermAt, _final_state, _fresh_root

    straight = train_module.train(compose_train(_fresh_root(tmp_path, mlflow_template, "straight"), RESUME))
    root = _fresh_root(tmp_path, mlflow_template, "killed")
    original = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda cfg, suite: [*original(cfg, suite), SigtermAt(KILL_AT)])
    with pytest.raises(SystemExit):
        train_module.train(compose_train(root, RESUME))
    monkeypatch.setattr(train_module, "build_callbacks", original)
    saved = torch.load(root / "outputs/job/checkpoints/on_exception.ckpt", map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in saved["image_pools"].items()} == {"a": (4, 1, 16, 16), "b": (4, 1, 16, 16)}

    cfg = compose_train(root, [*RESUME, "resume=last"])
    cfg.paths.output_dir = str(root / "outputs" / "resumed")
    resumed = train_module.train(cfg)
    a, b = _final_state(tmp_path / "straight"), _final_state(root, "resumed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=f"{key} differs after resume")
    assert resumed == pytest.approx(straight, rel=0, abs=0)
