"""`synthmed utility`: known-answer generators make the harness falsifiable (oracle helps, a copier does not beat
oversampling, a label flipper hurts, noise alone is at chance); bad input is refused before any training; the
command writes its report and MLflow child run."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from synthmed.data.phantom import PhantomDataset
from synthmed.evaluation.classifiers import LinearProbe
from synthmed.evaluation.utility import (
    LabelledSplit,
    ModelSource,
    Seen,
    SyntheticSource,
    UtilitySettings,
    check_leakage,
    run_utility,
)
from tests.conftest import compose_train
from tests.known_answer_sources import Copier, LabelFlipper, Noise, Oracle

# 16 px phantoms with conspicuous lesions and little noise, so that 150 steps of a linear probe learn them; a test
# split with 25 % lesions (40 rare cases) keeps the intervals informative.
PHANTOM = {"size": 16, "lesion_radius": [0.15, 0.25], "noise_std": 0.01, "bias_strength": 0.05}
SETTINGS = {"real_fraction": [0.1], "seeds": 4, "synth_ratio": 8.0, "n_boot": 300}


def _split(name: str, n: int, prevalence: float) -> LabelledSplit:
    ds = PhantomDataset(name, n_train=n, n_val=n, n_test=n, lesion_prevalence=prevalence, **PHANTOM)
    return LabelledSplit.of(ds, name, "test phantoms")


@pytest.fixture(scope="module")
def data():
    return {"train": _split("train", 256, 0.1), "val": _split("val", 64, 0.1), "test": _split("test", 160, 0.25)}


@pytest.fixture(scope="module")
def probe():
    """One probe for the module: its encoder is trained once (EncoderBank keeps it in memory)."""
    return LinearProbe(encoder_steps=200, steps=150, batch_size=32, lr=1e-2, eval_every=50)


def _run(probe, data, source, regimes, **overrides):
    settings = UtilitySettings(regimes=regimes, **{**SETTINGS, **overrides})
    return run_utility(probe, source, data["train"], data["val"], data["test"], settings)


def test_oracle_gains_over_the_best_real_baseline_at_a_small_real_fraction(probe, data):
    result = _run(probe, data, Oracle(PHANTOM), ["real", "real+oversample", "real+augment", "real+synth"])
    entry = result.summary["fractions"][0]
    gain = entry["gains"]["real+synth"]
    assert gain["auroc"]["ci_low"] > 0 and gain["auroc"]["verdict"] == "gain", gain["auroc"]
    assert entry["n_real"] == 26 and entry["n_real_rare"] == 3 and entry["n_synth"] == 208
    # predictions.csv rows: every regime x seed x test case, with the columns synthmed bias reads
    rows = result.predictions
    assert len(rows) == 4 * 4 * 160
    assert set(rows[0]) == {"regime", "seed", "real_fraction", "case", "y_true", "score", "sex", "age"}
    assert [r["y_true"] for r in rows[:160]] == data["test"].labels.tolist()


def test_copier_is_no_gain_over_oversampling(probe, data):
    entry = _run(probe, data, Copier(), ["real", "real+oversample", "real+synth"]).summary["fractions"][0]
    gain = entry["gains"]["real+synth"]["auroc"]
    assert gain["ci_low"] <= 0 and gain["verdict"] != "gain", gain
    assert abs(gain["mean"]) < 0.05  # repeating its own rare images is what oversampling already does


def test_label_flipper_loses(probe, data):
    entry = _run(probe, data, LabelFlipper(PHANTOM), ["real+oversample", "real+synth"]).summary["fractions"][0]
    assert entry["gains"]["real+synth"]["auroc"]["ci_high"] < 0
    assert entry["gains"]["real+synth"]["auroc"]["verdict"] == "loss"


def test_noise_alone_is_at_chance(probe, data):
    shape = data["train"].images.shape[1:]
    entry = _run(probe, data, Noise(shape), ["real", "synth"], synth_ratio=2.0).summary["fractions"][0]
    auroc = entry["regimes"]["synth"]["auroc"]
    assert auroc["ci_low"] < 0.5 < auroc["ci_high"], auroc
    assert entry["regimes"]["real"]["auroc"]["ci_low"] > 0.5  # while the real data do teach it


# ------------------------------------------------------------------------------------------ refused before training
class _Untrainable(LinearProbe):
    def prepare(self, *args, **kwargs):
        raise AssertionError("training started before the input was checked")


class _OneClass(SyntheticSource):
    classes = (0,)

    def sample(self, labels, seed, real):
        raise AssertionError("sampled before the input was checked")


def _refused(data, source, match, **overrides):
    settings = UtilitySettings(**{"regimes": ["real", "real+synth"], **SETTINGS, **overrides})
    with pytest.raises(ValueError, match=match):
        run_utility(_Untrainable(), source, data["train"], data["val"], data["test"], settings)


def test_bad_input_is_refused_by_key_before_any_training(data):
    _refused(data, _OneClass(), r"synth_labels asks for classes \[0, 1\].*can make only \[0\]")
    _refused(data, Oracle(PHANTOM), r"min_test_positives=50", min_test_positives=50)
    _refused(data, Oracle(PHANTOM), r"real_fraction=0.01.*no rare case", real_fraction=[0.01])
    _refused(data, Oracle(PHANTOM), r"regimes: unknown \['real\+gan'\]", regimes=["real", "real+gan"])
    unlabelled = [{"image": torch.zeros(1, 16, 16), "id": "x"}]
    with pytest.raises(ValueError, match=r"split 'train' have no 'label'"):
        LabelledSplit.of(unlabelled, "train", "data set 'folder'")


class _Diverged(SyntheticSource):
    classes = (0, 1)

    def sample(self, labels, seed, real):
        images = torch.zeros(len(labels), *real.images.shape[1:])
        images[1, 0, 3, 3] = float("nan")  # clamp(-1, 1) keeps a NaN
        return images


def test_a_generator_that_makes_nan_is_named_before_a_classifier_trains_on_it(data):
    """NaN images trained NaN weights, and the harness ended in binary_cross_entropy's "all elements of input should
    be between 0 and 1" (a RuntimeError that said nothing about the generator) after training the real regimes."""
    from synthmed.evaluation.utility import _synthetic

    settings = UtilitySettings(regimes=["real", "real+synth"], **SETTINGS)
    with pytest.raises(ValueError, match=r"generator made 1 of 104 images with NaN or infinite values \(seed 3\)"):
        _synthetic(_Diverged(), data["train"].subset(torch.arange(13)), settings, seed=3)


def test_leakage_is_refused_naming_the_overlapping_ids(data):
    test = data["test"]
    leaky = Seen(frozenset(test.ids[3:5]), frozenset())
    with pytest.raises(ValueError, match=r"shares 2 case\(s\) with what generator run X.*phantom-test-00003"):
        check_leakage(test, {"generator run X": leaky})
    copied = data["train"].subset(torch.arange(10))
    copied.ids = [f"renamed-{i}" for i in range(10)]  # the same images under other ids: caught by content
    with pytest.raises(ValueError, match="renamed-0"):
        check_leakage(copied, {"the classifier": Seen.of(data["train"])})
    check_leakage(test, {"the classifier": Seen.of(data["train"])})  # disjoint splits pass


def test_one_unconditional_run_per_class_gives_labelled_images_and_a_single_one_is_refused(tmp_path):
    from synthmed.config import instantiate

    cfg = compose_train(tmp_path, ["debug=smoke", "model=gan"])
    torch.manual_seed(0)
    healthy, lesion = instantiate(cfg.model, "model").eval(), instantiate(cfg.model, "model").eval()
    with pytest.raises(ValueError, match=r"unconditional.*runs=\{0: <id>, 1: <id>\}"):
        ModelSource({None: healthy})
    source = ModelSource({0: healthy, 1: lesion}, batch_size=8)
    labels = torch.tensor([1, 0, 0, 1, 0])
    images = source.sample(labels, seed=5)
    assert source.classes == (0, 1) and images.shape == (5, 1, 16, 16)
    with torch.no_grad():  # each class's images are its own run's samples, from a stream of its own
        assert torch.equal(images[labels == 0], healthy.sample(3, generator=torch.Generator().manual_seed(5)))
        assert torch.equal(images[labels == 1], lesion.sample(2, generator=torch.Generator().manual_seed(5 + 7919)))


# ----------------------------------------------------------------------------------------------- the command
def _record_generator(root, overrides) -> str:
    """An untrained smoke model recorded as `synthmed train` records a run (config, weights-only checkpoint, data
    fingerprint): the command under test is `utility`, whose answer for a noise generator is known anyway."""
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from synthmed.config import instantiate
    from synthmed.tracking import tags as tk

    cfg = compose_train(root, overrides)
    model = instantiate(cfg.model, "model")
    folder = root / "recorded"
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, folder / "checkpoints" / "final.ckpt")
    (folder / "config").mkdir()
    OmegaConf.save(cfg, folder / "config" / "config.yaml", resolve=True)
    fingerprint = instantiate(cfg.dataset.datamodule, "dataset.datamodule").fingerprint
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    run = client.create_run(client.create_experiment("phantom2d"), run_name="ddpm-phantom2d-test",
                            tags={tk.DATASET_FINGERPRINT: fingerprint})
    client.log_artifacts(run.info.run_id, str(folder))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_utility_command_writes_the_report_and_a_child_run(run_root):
    from mlflow.tracking import MlflowClient

    from synthmed.utility import utility

    run_id = _record_generator(run_root, ["debug=smoke", "model=gan", "model.cond=label"])  # GANs sample at once
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    generator = client.get_run(run_id)
    out = run_root / "report"
    summary = utility(compose_train(run_root, [
        f"run={generator.info.run_id}", "regimes=[real,real+oversample,real+synth]", "real_fraction=[0.5,1.0]",
        "seeds=2", "n_boot=100", "min_test_positives=5", "+data.n_test=100",  # 64 recorded: 6 rare cases
        "+data.n_train=128",  # the classifier's real data: a quarter of what the generator saw (512)
        "classifier.steps=20", "classifier.encoder_steps=20",
        "by=[sex]", "min_n=10", "min_pos=2", f"out={out}"], config_name="utility"))
    report = client.get_run(summary["run_id"])
    assert report.data.tags["synthmed.report"] == "utility"
    assert report.data.tags["mlflow.parentRunId"] == generator.info.run_id
    assert report.info.status == "FINISHED"
    history = client.get_metric_history(summary["run_id"], "utility/gain_auroc")
    assert sorted(m.step for m in history) == [500, 1000]
    for key in ("utility/gain_auroc_ci_low", "utility/auroc_real_oversample", "utility/rare_sens_at_spec90_real"):
        assert key in report.data.metrics
    artifacts = {f.path for f in client.list_artifacts(summary["run_id"], "utility")}
    assert {"utility/utility.json", "utility/utility.md", "utility/utility.html",
            "utility/predictions.csv"} <= artifacts
    html = (out / "utility.html").read_text()
    assert "data:image/png;base64," in html and "http" not in html.replace("http-equiv", "")
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 3 * 2 * 2 * 100 and rows[0]["regime"] == "real"
    assert json.loads((out / "utility.json").read_text())["generator_runs"]["conditional"] == generator.info.run_id
    # by=[sex]: the downstream layer of `synthmed bias`, on the predictions.csv it reads (as written)
    layer = summary["downstream_by_group"]
    assert layer["baseline"].startswith("real@") and layer["candidate"].startswith("real+synth@")
    assert layer["n_cases"] == 100 and "utility/bias_downstream.md" in artifacts
    assert "### by sex" in (out / "bias_downstream.md").read_text()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cnn_head_and_augmentation_work_in_2d_and_3d(spatial_dims):
    from synthmed.evaluation.classifiers import CNNClassifier
    from synthmed.evaluation.utility import augmentation

    x = torch.rand(4, 1, *(8,) * spatial_dims) * 2 - 1
    head = CNNClassifier(channels=[4, 8], strides=[2, 2], steps=1).head(x[0])
    assert head(x).shape == (4, 1)
    a, b = augmentation(spatial_dims, seed=3)(x), augmentation(spatial_dims, seed=3)(x)
    assert torch.equal(a, b) and a.shape == x.shape and a.abs().max() <= 1  # seeded, in range
    assert not torch.equal(a, augmentation(spatial_dims, seed=4)(x))


def test_cnn_classifier_trains_through_the_harness(data):
    from synthmed.evaluation.classifiers import CNNClassifier

    cnn = CNNClassifier(channels=[4, 8], strides=[2, 2], num_res_units=0, steps=10, eval_every=5)
    settings = UtilitySettings(regimes=["real", "real+augment"], real_fraction=[0.5], seeds=1, n_boot=100)
    result = run_utility(cnn, None, data["train"], data["val"], data["test"], settings)
    scores = torch.tensor([r["score"] for r in result.predictions])
    assert len(scores) == 2 * 160 and bool(((scores > 0) & (scores < 1)).all())
    assert "gains" in result.summary["fractions"][0] and not result.summary["fractions"][0]["gains"]
