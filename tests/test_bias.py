"""Bias across patient groups (issue 15): disaggregation against fairlearn and hand computation, the stratified
bootstrap, undefined metrics, planted-bias phantoms and known answers (oracle, under-representing generator,
planted underdiagnosis), and the `synthmed bias` command end to end on a smoke run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from synthmed.data.datamodule import covariates
from synthmed.data.phantom import PhantomDataset
from synthmed.evaluation.bias import image_layers
from synthmed.metrics import bias as B
from synthmed.metrics import fairness as F
from synthmed.metrics import names
from synthmed.metrics.domain import EncoderBank, EncoderSettings

METRICS = list(F.CLASSIFIER_METRICS)

# Fixed vectors: group a has 3 positives (scores .9 .4 .8) and 3 negatives (.2 .6 .1); b 1 positive, 3 negatives.
Y = np.array([1, 1, 0, 0, 1, 0, 1, 0, 0, 0])
S = np.array([.9, .4, .2, .6, .8, .1, .7, .3, .6, .2])
G = np.array(["a"] * 6 + ["b"] * 4)
HAND = {"a": {"auroc": 8 / 9, "sensitivity": 2 / 3, "fnr": 1 / 3, "fpr": 1 / 3},
        "b": {"auroc": 1.0, "sensitivity": 1.0, "fnr": 0.0, "fpr": 1 / 3}}


def _value(result, group, metric, condition="m"):
    [row] = [g for g in result["groups"] if g["group"] == group]
    return row["values"][condition][metric]


def test_by_group_and_gaps_equal_metricframe_and_hand_computation():
    result = F.disaggregate(Y, {"m": S}, G, min_n=1, min_pos=1, n_boot=50)
    frame = F.metric_frame(Y, S, G, METRICS, 0.5)
    for group, expected in HAND.items():
        for metric, value in expected.items():
            assert _value(result, group, metric)["value"] == pytest.approx(value)
            assert frame.by_group.loc[group, metric] == pytest.approx(value)
    for metric in METRICS:
        gap = result["gaps"]["m"][metric]
        assert gap["difference"]["value"] == pytest.approx(frame.difference()[metric])
        assert gap["ratio"]["value"] == pytest.approx(frame.ratio()[metric], nan_ok=True)
        assert gap["group_min"] == pytest.approx(frame.group_min()[metric])
        assert gap["group_max"] == pytest.approx(frame.group_max()[metric])
    assert result["gaps"]["m"]["sensitivity"]["worst_group"] == "a"  # higher is better: the lower one is worst
    assert result["gaps"]["m"]["fnr"]["worst_group"] == "a"  # lower is better: the higher one is worst


def test_replicate_computation_equals_metricframe_with_ties():
    """The vectorized per-group values behind every bootstrap replicate equal MetricFrame's (ties in scores)."""
    rng = np.random.default_rng(1)
    y, s = (rng.random(300) < 0.3).astype(int), rng.integers(0, 6, 300) / 5  # heavy ties, scores on the threshold
    groups = rng.choice(["x", "y", "z"], 300)
    names_, codes = np.unique(groups, return_inverse=True)
    fast = F._by_group_fast(y, s, codes, len(names_), METRICS, 0.6)
    frame = F.metric_frame(y, s, groups, METRICS, 0.6).by_group
    for m in METRICS:
        np.testing.assert_allclose(fast[m], frame[m].reindex(names_).to_numpy(), rtol=1e-12)


def test_stratified_bootstrap_keeps_every_group_and_class_size():
    rng = np.random.default_rng(0)
    groups, y = rng.choice(["F", "M", "X"], 200, p=[.6, .35, .05]), (rng.random(200) < 0.2).astype(int)
    strata = np.char.add(groups, y.astype(str))
    want = {s: int((strata == s).sum()) for s in np.unique(strata)}
    for idx in F.stratified_bootstrap(strata, 30, seed=3):
        assert len(idx) == 200
        assert {s: int((strata[idx] == s).sum()) for s in want} == want
    draws = [tuple(i) for i in F.stratified_bootstrap(strata, 2, seed=3)]
    assert draws[0] != draws[1]  # replicates do resample


def test_undefined_metric_is_nan_with_its_reason_and_small_groups_leave_the_gaps():
    y = np.r_[Y, 0, 0, 0, 1, 0]
    s = np.r_[S, .1, .7, .2, .9, .3]
    g = np.concatenate([G, ["c", "c", "c", "d", "d"]])  # c: no positives; d: 2 cases
    result = F.disaggregate(y, {"m": s}, g, min_n=3, min_pos=1, n_boot=50)
    for metric in ("auroc", "sensitivity", "fnr"):
        entry = _value(result, "c", metric)
        assert np.isnan(entry["value"]) and entry["undefined"] == "no positive cases"
    assert _value(result, "c", "fpr") == {**_value(result, "c", "fpr"), "value": 1 / 3, "undefined": None}
    excluded = {e["group"]: e for e in result["excluded"]}
    assert excluded["c"]["why"] == "0 positives < min_pos=1" and excluded["d"]["n"] == 2
    assert "min_n=3" in excluded["d"]["why"]
    gap = result["gaps"]["m"]["fpr"]
    assert gap["groups_compared"] == ["a", "b"]  # c's FPR (1/3) and d's are reported but not compared
    assert gap["difference"]["value"] == pytest.approx(0.0)


def test_age_bands_and_groupings():
    bands = F.age_bands([20, 39.9, 40, 89, 90], [20, 40, 60, 90])
    assert bands.tolist() == ["20-40", "20-40", "40-60", "60-90", "60-90"]
    with pytest.raises(ValueError, match="age_bands.*outside"):
        F.age_bands([19.0], [20, 40, 90])
    with pytest.raises(ValueError, match="increasing"):
        F.age_bands([30.0], [20, 60, 40])
    cols = F.group_columns({"sex": np.array([0, 1]), "age": np.array([25.0, 70.0])}, ["sex", "age_band"],
                           [20, 40, 60, 90], intersect=True)
    assert cols["sex x age_band"].tolist() == ["0 x 20-40", "1 x 60-90"]
    with pytest.raises(ValueError, match="by: no covariate 'site'"):
        F.group_columns({"sex": np.array([0])}, ["site"], [20, 90])


def test_representation_chi2_matches_scipy_and_tvd_by_hand():
    from scipy.stats import chi2_contingency

    fake, real = np.array(["0"] * 30 + ["1"] * 70), np.array(["0"] * 55 + ["1"] * 45)
    rep = F.representation(fake, real, n_boot=200)
    assert rep["tvd"]["value"] == pytest.approx(0.25)
    assert rep["groups"][0]["gap"]["value"] == pytest.approx(-0.25)
    assert rep["chi2"]["p_value"] == pytest.approx(chi2_contingency([[30, 70], [55, 45]])[1])
    assert rep["groups"][0]["gap"]["high"] < 0  # a 25-point under-representation at n=100 is shown


def test_representation_counts_a_group_only_the_reader_puts_real_images_in():
    """The groups compared were those of the training, true held-out and generated sets: a group that only the
    read held-out images fall in was dropped, so their shares summed to 0.9 and the TVD came out 0.05, not 0.1."""
    from scipy.stats import chi2_contingency

    fake, read = {"sex": np.zeros(40)}, {"sex": np.r_[np.zeros(36), np.ones(4)]}  # 4 of 40 real images read as 1
    rep = B.representation_layer(fake, read, {"sex": np.zeros(40)}, {"sex": np.zeros(100)}, ["sex"], [20, 90],
                                 False, n_boot=50, seed=0)["sex"]
    vs = rep["vs_heldout_read"]
    assert [g["group"] for g in vs["groups"]] == ["0", "1"]
    assert sum(g["share_real"] for g in vs["groups"]) == pytest.approx(1.0)
    assert vs["tvd"]["value"] == pytest.approx(0.1)
    assert vs["chi2"]["p_value"] == pytest.approx(chi2_contingency([[40, 0], [36, 4]])[1])
    assert rep["reader_accuracy"]["1"]["undefined"] == "no images in this group"


# ------------------------------------------------------------------------------------------------ planted phantoms
def test_planted_phantom_options_plant_what_they_say_and_defaults_stay_identical():
    kw = {"size": 16, "n_train": 400, "noise_std": 0.0}
    default = PhantomDataset("train", **kw)
    explicit_none = PhantomDataset("train", **kw, lesion_prevalence_by_sex=None, train_exclude_age=None)
    assert explicit_none.fingerprint == default.fingerprint and torch.equal(explicit_none.image, default.image)
    assert "lesion_prevalence_by_sex" not in default.settings
    planted = PhantomDataset("train", **kw, lesion_prevalence_by_sex=[0.2, 0.1], train_exclude_age=[40, 60])
    c = planted.covariates()
    for sex, p in ((0, 0.2), (1, 0.1)):
        assert c["label"][c["sex"] == sex].sum() == round(p * (c["sex"] == sex).sum())  # exact counts per sex
    assert not ((c["age"] >= 40) & (c["age"] < 60)).any() and c["age"].min() >= 20 and c["age"].max() <= 90
    assert np.array_equal(c["sex"], default.covariates()["sex"])  # the same subjects, only the planted parts move
    assert planted.fingerprint != default.fingerprint
    val = PhantomDataset("val", **kw, train_exclude_age=[40, 60]).covariates()["age"]
    assert ((val >= 40) & (val < 60)).any()  # the band is missing from the train split only
    with pytest.raises(ValueError, match="lesion_prevalence_by_sex"):
        PhantomDataset("train", **kw, lesion_prevalence_by_sex=[0.2])
    with pytest.raises(ValueError, match="train_exclude_age"):
        PhantomDataset("train", **kw, train_exclude_age=[60, 40])


def lesion_evidence(data: PhantomDataset) -> np.ndarray:
    """A classifier score built directly from the image: the brightest pixel (lesions are the brightest tissue)."""
    return data.image.flatten(1).amax(1).numpy()


def test_a_classifier_on_planted_contrast_shows_the_planted_underdiagnosis_gap():
    kw = {"size": 32, "n_test": 300, "noise_std": 0.0, "lesion_prevalence": 0.3}
    faint = PhantomDataset("test", **kw, lesion_contrast_by_sex=[1.0, 0.4])  # sex 1 lesions are faint
    fair = PhantomDataset("test", **kw)
    c = faint.covariates()
    threshold = 2 * 0.85 - 1  # MR native 0.85 in [-1, 1] units: above white matter (0.72), below a lesion (0.97)
    rows = [pd.DataFrame({"regime": regime, "seed": 0, "real_fraction": 1.0, "case": np.arange(len(c["label"])),
                          "y_true": c["label"], "score": lesion_evidence(data), "sex": c["sex"], "age": c["age"]})
            for regime, data in (("real", faint), ("real+synth", fair))]
    down = B.downstream_layer(pd.concat(rows), ["sex"], [20, 90], False, threshold=threshold, n_boot=300,
                              min_n=20, min_pos=5)
    sex = down["by_grouping"]["sex"]
    fnr = sex["gaps"]["real@1"]["fnr"]
    assert fnr["worst_group"] == "1" and fnr["difference"]["low"] > 0.3  # the planted gap, interval clear of 0
    unbiased = sex["gaps"]["real+synth@1"]["fnr"]["difference"]
    assert unbiased["low"] <= 0 <= unbiased["high"]  # no planted bias: no gap shown
    change = sex["changes"]["real@1 -> real+synth@1"]["fnr"]["difference"]
    assert change["high"] < 0  # the gap shrinks, paired on the same cases
    same = B.downstream_layer(pd.concat([rows[0], rows[0].assign(regime="real+synth")]), ["sex"], [20, 90], False,
                              threshold=threshold, n_boot=50)
    assert same["by_grouping"]["sex"]["changes"]["real@1 -> real+synth@1"]["fnr"]["difference"] == {
        "value": 0.0, "low": 0.0, "high": 0.0}


def test_conditioning_per_requested_group_counts_by_hand():
    requested = {"sex": np.array([0, 0, 0, 0, 1, 1, 1, 1]), "label": np.array([1, 1, 0, 0, 1, 1, 0, 0])}
    read = {"sex": np.array([0, 0, 0, 1, 1, 0, 0, 0]), "label": np.array([1, 0, 0, 0, 0, 0, 0, 1]),
            "age": np.full(8, 50.0)}
    cond = B.conditioning_layer(requested, read, ["sex"], [20, 90], False)["sex"]
    assert cond["0"]["sex"]["value"] == 3 / 4 and cond["1"]["sex"]["value"] == 1 / 4
    assert cond["0"]["rare_class_rate"]["value"] == 1 / 2 and cond["1"]["rare_class_rate"]["value"] == 0.0
    assert cond["1"]["rare_class_rate"]["n"] == 2 and cond["0"]["rare_class_rate"]["low"] > 0


def test_rare_class_rate_per_group_against_statsmodels():
    from statsmodels.stats.proportion import confint_proportions_2indep

    fake_label, real_label = np.r_[np.ones(2), np.zeros(38), np.ones(10), np.zeros(30)], np.r_[np.ones(8), np.zeros(32)]
    fake_groups = {"sex": np.array(["0"] * 40 + ["1"] * 40)}  # sex 0: 2 of 40 read as lesions; sex 1: 10 of 40
    real_groups = {"sex": np.array(["0"] * 20 + ["1"] * 20)}  # real: 8 of 20 in sex 0, none in sex 1
    out = B.rare_class_layer(fake_label, fake_groups, real_label, real_groups)["sex"]
    assert out["0"]["fake"]["value"] == 0.05 and out["0"]["real"]["value"] == 0.4
    low, high = confint_proportions_2indep(2, 40, 8, 20, method="newcomb", compare="diff")
    assert out["0"]["difference"] == pytest.approx({"value": 0.05 - 0.4, "low": low, "high": high})
    assert out["0"]["difference"]["high"] < 0 < out["1"]["difference"]["low"]  # under- and over-produced


def test_fidelity_per_group_scores_each_group_on_its_own_images():
    from synthmed.metrics.features import kid
    from synthmed.metrics.fid import fid_from_features

    gen = torch.Generator().manual_seed(0)
    fake, real = torch.randn(130, 4, generator=gen), torch.randn(120, 4, generator=gen)
    fake[:100] += 3.0  # group "a" of the generated images is shifted: it, not "b", must score worse
    fg, rg = np.array(["a"] * 100 + ["b"] * 30), np.array(["a"] * 60 + ["b"] * 60)
    out = B.fidelity_layer(fake, {"g": fg}, real, {"g": rg}, np.r_[np.ones(10, bool), np.zeros(120, bool)],
                           min_n=20, kid_subsets=5)["g"]
    a, b = out["groups"]["a"], out["groups"]["b"]
    assert a["kid"]["value"] == pytest.approx(kid(real[:60], fake[:100], subsets=5, subset_size=60)[0])
    assert a["fd_domain"] == pytest.approx(fid_from_features(fake[:100], real[:60]))
    assert a["kid"]["value"] > 10 * abs(b["kid"]["value"]) and out["kid_gap"]["worst_group"] == "a"
    assert a["memorization_rate"]["value"] == 0.1 and b["memorization_rate"]["value"] == 0.0
    assert a["memorization_rate"]["n"] == 100


def test_fidelity_per_group_x_label_cells_by_hand_with_min_n():
    """Cells are scored as groups are (the same references), small cells are listed with their counts and left out
    of the gap, and the cells' KID gap compares groups within one class."""
    from statsmodels.stats.proportion import proportion_confint

    from synthmed.metrics.features import kid, precision_recall
    from synthmed.reports.bias import fidelity_md

    gen = torch.Generator().manual_seed(0)
    fake, real = torch.randn(150, 4, generator=gen), torch.randn(140, 4, generator=gen)
    fg, fl = np.array(["a"] * 100 + ["b"] * 50), np.r_[np.zeros(70), np.ones(30), np.zeros(42), np.ones(8)]
    rg, rl = np.array(["a"] * 70 + ["b"] * 70), np.r_[np.zeros(45), np.ones(25), np.zeros(45), np.ones(25)]
    fake[100:142] += 2.0  # cell b x 0 of the generated images is off: it, not a x 0, is the worst healthy cell
    memorized = np.zeros(150, bool)
    memorized[70:76] = True  # 6 of the 30 generated a x 1 images
    out = B.fidelity_layer(fake, {"g": fg}, real, {"g": rg}, memorized, fake_label=fl, real_label=rl, min_n=20,
                           kid_subsets=5)["g"]
    cells = out["by_label"]
    assert sorted(cells["groups"]) == ["a x 0", "a x 1", "b x 0", "b x 1"]
    a1, b0, b1 = cells["groups"]["a x 1"], cells["groups"]["b x 0"], cells["groups"]["b x 1"]
    assert (a1["group"], a1["label"], a1["n_fake"], a1["n_real"]) == ("a", "1", 30, 25)
    assert a1["kid"]["value"] == pytest.approx(kid(real[45:70], fake[70:100], subsets=5, subset_size=25)[0])
    assert (a1["precision"], a1["recall"]) == pytest.approx(precision_recall(real[45:70], fake[70:100], 3))
    low, high = proportion_confint(6, 30, method="wilson")
    assert a1["memorization_rate"] == pytest.approx({"value": 0.2, "low": low, "high": high, "n": 30,
                                                     "undefined": None})
    assert not b1["scored"] and (b1["n_fake"], b1["n_real"]) == (8, 25) and "kid" not in b1  # 8 < min_n
    assert cells["excluded"] == [{"group": "b x 1", "n_fake": 8, "n_real": 25, "why": b1["skipped"]}]
    healthy, lesion = cells["kid_gap"]["0"], cells["kid_gap"]["1"]
    assert healthy["worst_group"] == "b x 0" and healthy["groups_compared"] == ["a x 0", "b x 0"]
    assert healthy["difference"] == pytest.approx(b0["kid"]["value"] - cells["groups"]["a x 0"]["kid"]["value"])
    assert lesion["groups_compared"] == ["a x 1"] and np.isnan(lesion["difference"])  # one scored cell: no gap
    assert out["groups"]["a"]["n_fake"] == 100 and out["excluded"] == []  # the groups themselves are unchanged
    text = "\n".join(fidelity_md({"g": out}, "requested label"))
    assert "left out of the gap (counts above): b x 1 (n_fake=8, n_real=25: below min_n=20 on a side)" in text
    assert "#### by g x label" in text


def test_fidelity_cells_take_the_requested_label_else_the_read_one():
    from synthmed.evaluation.bias import fidelity_labels

    requested, read, true = {"label": np.array([1, 0])}, np.array([0, 0]), {"label": np.array([1, 1, 0])}
    assert fidelity_labels(requested, read, true)[0].tolist() == [1, 0]
    assert fidelity_labels({"sex": np.array([0, 1])}, read, true) == (read, "read by the in-domain lesion reader")
    assert fidelity_labels(None, None, true)[0] is None
    assert fidelity_labels(requested, read, {"sex": np.array([0])})[0] is None  # no true labels: no cells


def test_bad_predictions_are_refused_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"missing columns \['age'\]"):
        B.downstream_layer(pd.DataFrame(columns=[c for c in B.PREDICTION_COLUMNS if c != "age"]), ["sex"], [20, 90],
                           False)
    good = pd.DataFrame({"regime": "real", "seed": 0, "real_fraction": 1.0, "case": [0, 1], "y_true": [0, 1],
                         "score": [0.1, 0.9], "sex": [0, 1], "age": [30.0, 95.0]})
    for name, change, message in (("labels", {"y_true": [0, 2]}, "y_true must be 0 or 1"),
                                  ("scores", {"score": [0.1, float("nan")]}, "score must be a finite number"),
                                  ("ages", {}, r"age_bands \[20.0, 40.0, 60.0, 90.0\]: 1 ages outside")):
        path = tmp_path / f"{name}.csv"
        good.assign(**change).to_csv(path, index=False)
        with pytest.raises(ValueError, match=f"{name}.csv: {message}"):
            B.read_predictions(path, ["sex", "age_band"], [20, 40, 60, 90])


# --------------------------------------------------------------------------------------- known-answer generators
@pytest.fixture(scope="module")
def phantom_splits():
    kw = {"size": 32, "n_train": 256, "n_val": 128, "n_test": 256}
    return {s: PhantomDataset(s, **kw) for s in ("train", "val", "test")}


@pytest.fixture(scope="module")
def readers():
    return EncoderBank(EncoderSettings(steps=150))  # 32 px: sex read right ~80 %, age band ~85 %


def _layers(fake, splits, bank):
    tr, va = splits["train"], splits["val"]
    return image_layers(fake, tr.image, covariates(tr), va.image, covariates(va), bank, by=["sex", "age_band"],
                        edges=[20, 40, 60, 90], n_boot=300, min_n=10, kid_subsets=10, read_label=False)


def test_oracle_generator_shows_no_representation_gap(phantom_splits, readers):
    oracle = phantom_splits["test"].image[:128]  # fresh subjects of the same distribution
    rep = _layers(oracle, phantom_splits, readers)["representation"]
    for grouping in ("sex", "age_band"):
        for g in rep[grouping]["vs_heldout_read"]["groups"]:
            assert g["gap"]["low"] <= 0 <= g["gap"]["high"], (grouping, g)


def test_generator_under_representing_a_sex_is_caught(phantom_splits, readers):
    test = phantom_splits["test"]
    only_sex0 = test.image[torch.as_tensor(test.covariates()["sex"] == 0)][:128]  # planted: one sex only
    out = _layers(only_sex0, phantom_splits, readers)
    sex = {g["group"]: g for g in out["representation"]["sex"]["vs_heldout_read"]["groups"]}
    assert sex["1"]["gap"]["high"] < 0 and sex["0"]["gap"]["low"] > 0
    assert out["representation"]["sex"]["vs_train"]["chi2"]["p_value"] < 1e-3
    assert out["fidelity"]["sex"]["groups"]["0"]["scored"]  # fidelity of the represented group is still scored


# ------------------------------------------------------------------------------------------------------ command
def untrained_run(root, template, overrides=("dataset=phantom2d_bias",)):
    """A FINISHED run record of an untrained tiny VAE (default: on the planted-bias phantoms): config and a
    weights-only checkpoint, what `synthmed bias` restores (training is not what this test is about, and costs a
    minute)."""
    import shutil

    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from synthmed.config import instantiate
    from tests.conftest import compose_train

    shutil.copy(template, root / "mlflow.db")
    cfg = compose_train(root, ["model=vae", *overrides, "debug=smoke"])
    model = instantiate(cfg.model, "model")
    (root / "rec" / "config").mkdir(parents=True)
    (root / "rec" / "checkpoints").mkdir()
    OmegaConf.save(cfg, root / "rec" / "config" / "config.yaml", resolve=True)
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, root / "rec" / "checkpoints" / "final.ckpt")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    run = client.create_run(client.create_experiment("bias", str(root / "artifacts")), run_name="vae-untrained")
    client.log_artifacts(run.info.run_id, str(root / "rec"))
    client.set_terminated(run.info.run_id)
    return client, client.get_run(run.info.run_id)


def log_utility_child(client, run, root):
    """A `synthmed utility` report run (issue 14's contract) whose predictions miss half the lesions of sex 1."""
    from synthmed.tracking import mlflow_utils as mt

    rng = np.random.default_rng(0)
    n = 200
    y, sex, age = (rng.random(n) < 0.3).astype(int), rng.integers(0, 2, n), rng.uniform(20, 90, n)
    missed = (sex == 1) & (rng.random(n) < 0.5)
    score = np.where((y == 1) & ~missed, 0.9, 0.1) + rng.uniform(-0.05, 0.05, n)
    frames = [pd.DataFrame({"regime": regime, "seed": seed, "real_fraction": 1.0, "case": np.arange(n),
                            "y_true": y, "score": score if regime == "real" else np.where(y == 1, 0.9, 0.1),
                            "sex": sex, "age": age}) for regime in ("real", "real+synth") for seed in (0, 1)]
    folder = root / "utility_report"
    folder.mkdir()
    pd.concat(frames).to_csv(folder / "predictions.csv", index=False)
    mt.report_run(client, run.info.experiment_id, "utility", folder, "utility", parent=run, artifact_path="utility")


def test_bias_command_logs_a_child_report(tmp_path, mlflow_template):
    from synthmed.bias import bias, utility_predictions
    from synthmed.tracking import tags as tk
    from tests.conftest import compose_train

    client, run = untrained_run(tmp_path, mlflow_template)
    with pytest.raises(ValueError, match="by: expected a list"):
        bias(compose_train(tmp_path, [f"run={run.info.run_id}", "by=sex"], config_name="bias"))
    with pytest.raises(ValueError, match="by=.*cannot group by \\['site'\\]"):
        bias(compose_train(tmp_path, [f"run={run.info.run_id}", "by=[site]"], config_name="bias"))
    cfg = compose_train(tmp_path, [f"run={run.info.run_id}", "n_samples=32", "n_boot=100", "min_n=5",
                                   "metrics.domain_steps=20", "kid_subsets=5", "intersect=true"], config_name="bias")
    assert "synthmed utility run=" in utility_predictions(client, run, cfg)[1]  # no utility run yet: how to get one
    log_utility_child(client, run, tmp_path)
    report = bias(cfg)
    child = client.get_run(report["report_run_id"])
    assert child.data.tags[tk.REPORT] == "bias" and child.data.tags[tk.PARENT_RUN] == run.info.run_id
    assert tk.CONFIG_HASH not in child.data.tags  # a hash never resolves to a report
    assert child.data.params["by"] == str(["sex", "age_band", "intersections"])
    assert names.per_grouping(names.BIAS_REPRESENTATION_TVD, "sex x age_band") in child.data.metrics
    arts = {a.path for a in client.list_artifacts(child.info.run_id, "bias")}
    assert {"bias/bias.json", "bias/bias.md", "bias/bias.html"} <= arts
    folder = tmp_path / "outputs" / "job" / "bias"
    saved = json.loads((folder / "bias.json").read_text())  # strict JSON: undefined values are null
    assert saved["n_fake"] == 32 and saved["downstream"]["candidate"] == "real+synth@1"
    sex = saved["downstream"]["by_grouping"]["sex"]
    assert sex["gaps"]["real@1"]["fnr"]["worst_group"] == "1"  # the utility run's planted underdiagnosis
    assert names.per_grouping(names.gap_change(names.BIAS_FNR_DIFFERENCE), "sex") in child.data.metrics
    assert set(saved["representation"]) == {"sex", "age_band", "sex x age_band"}
    assert set(saved["rare_class"]) == {"sex", "age_band", "sex x age_band"}  # unconditional: lesion rate per group
    assert saved["fidelity_label_source"] == "read by the in-domain lesion reader"  # unconditional: cells by reading
    cells = saved["fidelity"]["sex"]["by_label"]["groups"]
    assert sum(c["n_fake"] for c in cells.values()) == 32 and {c["label"] for c in cells.values()} <= {"0", "1"}
    page = (folder / "bias.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page  # self-contained: nothing fetched


def test_bias_command_on_a_3d_run(tmp_path, mlflow_template):
    """3D volumes (16^3 phantoms) go through the same three layers: the readers are 3D encoders, every layer is
    there, and the cells of layer 2 hold every generated volume once."""
    from synthmed.bias import bias
    from tests.conftest import compose_train

    _, run = untrained_run(tmp_path, mlflow_template, ["dataset=phantom3d", "dataset.size=16"])
    report = bias(compose_train(tmp_path, [f"run={run.info.run_id}", "n_samples=24", "n_boot=50", "min_n=5",
                                           "metrics.domain_steps=10", "kid_subsets=3", "split=test"],
                                config_name="bias"))
    assert "(3D," in report["reader"]["reader.encoder"] and report["n_fake"] == 24 and report["n_real"] == 32
    assert set(report["representation"]) == set(report["fidelity"]) == {"sex", "age_band"}
    cells = report["fidelity"]["age_band"]["by_label"]["groups"]
    assert sum(c["n_fake"] for c in cells.values()) == 24 and sum(c["n_real"] for c in cells.values()) == 32
    assert (tmp_path / "outputs" / "job" / "bias" / "bias.html").is_file()
