"""`synthmed sample` through the privacy gate, and the cards: a smoke model (noise) passes and its export lands whole
with report and cards; a copying model is refused and leaves nothing; gate=off is recorded; `synthmed card` writes
a model card with a performance block; no card copies a path under the data root or a non-metric tag."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from synthmed.data.phantom import PhantomDataset
from synthmed.evaluation.gate import GateRefused
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from tests.conftest import SMOKE_RUN, compose_train

FAST = [*SMOKE_RUN, "trainer.max_steps=1", "trainer.val_check_interval=1", "eval.n_samples=2",
        "metrics.domain_steps=5", "callbacks.generation_metrics.n_samples=2"]
SECRET = "/secret_data_root/site7"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, mlflow_template):
    """A 1-step DDPM on the 16 px phantoms (it outputs noise) in a store of its own."""
    from synthmed.train import train

    root = tmp_path_factory.mktemp("sharing")
    shutil.copy(mlflow_template, root / "mlflow.db")
    train(compose_train(root, FAST))
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return root, client, run


def export(root, run, out, *extra):
    from synthmed.sample import sample

    return sample(compose_train(root, [f"run={run.info.run_id}", "n=6", f"out={out}", *extra], config_name="sample"))


def front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_a_passing_export_lands_whole_with_report_and_cards(smoke, tmp_path):
    import mlcroissant as mlc

    root, client, run = smoke
    out = tmp_path / "share"
    paths = export(root, run, out)
    assert len(paths) == 6
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"sample_{i:06d}{e}" for i in range(6) for e in (".png", ".json")]
                           + ["privacy_report.json", "DATASET_CARD.md", "croissant.json"])
    assert [p.name for p in tmp_path.iterdir()] == ["share"]  # no temporary folder left beside it
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["gate"] == "refuse" and report["passed"] and "not a privacy guarantee" in report["statement"]
    assert report["training_split"]["fingerprint"] == run.data.tags[tk.DATASET_FINGERPRINT]
    assert report["training_split"]["n_images"] == 512  # the FULL training split, not a subsample
    assert {"pixel_nearest_neighbour", "embedding_cosine", "hard_copy_rule"} == set(report["detectors"])
    assert not report["rate_tests"][0]["powered"] and "too small" in report["rate_tests"][0]["power_note"]
    assert report["top_pairs"] and not any("train_index" in p for p in report["top_pairs"])  # no pointer to a patient
    pairs = list((root / "privacy_audit").glob(f"{run.info.run_id}-*-pairs.png"))
    assert len(pairs) == 1 and out not in pairs[0].parents  # real patients stay outside the shared folder

    dataset = mlc.Dataset(jsonld=out / "croissant.json")  # raises on a Croissant validation error; offline
    meta = json.loads((out / "croissant.json").read_text())
    assert dataset.metadata.name == meta["name"] and "Synthetic data" in meta["rai:dataCollectionType"]
    assert not dataset.metadata.ctx.issues.warnings
    records = list(dataset.records("samples"))  # mlcroissant reads the images the metadata describes
    assert len(records) == 6 and records[0]["samples/image"].size == (16, 16)
    for key in ("rai:dataBiases", "rai:dataLimitations", "rai:dataUseCases", "rai:personalSensitiveInformation"):
        assert meta[key]
    assert run.info.run_id in meta["description"]
    head, body = front_matter((out / "DATASET_CARD.md").read_text())
    assert head["synthetic"] is True and head["generator"]["run_id"] == run.info.run_id
    assert head["training_data"]["n_images"] == 512 and head["privacy_gate"]["passed"] is True
    assert "## Uses" in body and "### Out-of-Scope Use" in body and "val/fd_domain" in body

    tags = client.get_run(run.info.run_id).data.tags
    assert tags[tk.EXPORT_GATE] == "refuse"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "exports")]


def test_a_copying_model_is_refused_and_nothing_is_written(smoke, tmp_path, monkeypatch):
    import synthmed.sample as sample_mod

    root, client, run = smoke
    train = PhantomDataset("train", 2, 16).image
    restore = sample_mod.restore_for_sampling

    def copying(cfg):  # the run's model, made to return its training images (shifted by a pixel)
        client_, restored = restore(cfg)
        restored.model.sample = lambda n, generator=None, cond=None, offset=0: torch.roll(
            train[offset:offset + n], 1, 3)
        return client_, restored

    monkeypatch.setattr(sample_mod, "restore_for_sampling", copying)
    out = tmp_path / "share"
    with pytest.raises(GateRefused, match=r"6 of 6 samples flagged; 6 of 6 samples are near-exact copies"):
        export(root, run, out)
    assert list(tmp_path.iterdir()) == []  # refused: no folder, no partial or temporary one
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "exports")]
    refused = [r for r in (json.loads(open(client.download_artifacts(run.info.run_id, p, str(tmp_path.parent / "dl")))
                                      .read()) for p in logged) if "refused" in r]
    assert refused and refused[0]["n_flagged"] == 6 and not refused[0]["passed"]  # the run keeps the decision
    assert refused[0]["top_pairs_image"].startswith(str(root / "privacy_audit"))


def test_gate_off_is_asked_for_and_recorded_in_export_and_run(smoke, tmp_path):
    root, client, run = smoke
    out = tmp_path / "share"
    export(root, run, out, "gate=off")
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["gate"] == "off" and report["audited"] is False and "NOT audited" in report["statement"]
    head, body = front_matter((out / "DATASET_CARD.md").read_text())
    assert "NOT audited" in body and head["privacy_gate"]["mode"] == "off"
    assert head["training_data"]["n_images"] == 512  # from the run's data/dataset.json: no audit read the split
    assert client.get_run(run.info.run_id).data.tags[tk.EXPORT_GATE] == "off"
    export(root, run, out, "n=2")  # an earlier export is replaced as a whole
    assert len(list(out.glob("sample_*.png"))) == 2 and json.loads((out / "privacy_report.json").read_text())["passed"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's own file")
    with pytest.raises(FileExistsError, match="neither empty nor an earlier export"):  # before any model is loaded
        export(root, run, tmp_path / "mine")
    with pytest.raises(ValueError, match="gate must be one of"):
        export(root, run, tmp_path / "x", "gate=maybe")
    with pytest.raises(ValueError, match=r"privacy\.quantile: invalid value 2"):
        export(root, run, tmp_path / "x", "privacy.quantile=2")


def test_cards_read_reports_and_copy_no_path_or_foreign_tag(smoke, tmp_path):
    from synthmed.card import card

    root, client, run = smoke
    run_id = run.info.run_id
    client.log_param(run_id, "dataset.datamodule.dataset.root", SECRET)  # what a file data set's run holds
    mt.set_tags(client, run_id, {"synthmed.fd_domain.weights_file": f"{SECRET}/enc.pt",
                                 "synthmed.dicom.patient_name": "DOE^JANE"})
    utility = tmp_path / "utility"
    utility.mkdir()
    stat = lambda mean: {"mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05, "per_seed": [mean]}  # noqa: E731
    regimes = {"real": {"auroc": stat(0.81)}, "synth": {"auroc": stat(0.74)}, "real+synth": {"auroc": stat(0.83)}}
    (utility / "utility.json").write_text(json.dumps({  # the layout `synthmed utility` writes
        "n_test": 64, "regimes": list(regimes), "data_root": SECRET,
        "fractions": [{"real_fraction": 0.5, "regimes": {"real": {"auroc": stat(0.6)}}},
                      {"real_fraction": 1.0, "regimes": regimes}]}))
    mt.report_run(client, run.info.experiment_id, "utility", utility, "utility", parent=run, artifact_path="utility")

    path = card(compose_train(root, [f"run={run_id}"], config_name="card"))
    text = path.read_text()
    head, body = front_matter(text)
    perf = head["performance"]  # the regimes of the largest real fraction, as mean and 95 % interval
    assert perf["trained_on_fake"]["auroc"] == {"mean": 0.74, "ci_low": 0.69, "ci_high": 0.79}
    assert perf["trained_on_real"]["auroc"]["mean"] == 0.81 and perf["trained_on_real_and_fake"]["auroc"]["mean"] == 0.83
    assert perf["real_fraction"] == 1.0 and perf["n_test"] == 64 and "## Performance" in body
    assert head["training_data"]["n_images"] == 512 and head["model"]["config_hash"] == run.data.tags[tk.CONFIG_HASH]
    assert client.get_run(run_id).data.tags[tk.MODEL_CARD] == "card/MODEL_CARD.md"
    logged = client.download_artifacts(run_id, "card/MODEL_CARD.md", str(tmp_path / "dl"))
    assert open(logged).read() == text

    out = tmp_path / "share"
    export(root, run, out)
    cards = [text, (out / "DATASET_CARD.md").read_text(), (out / "croissant.json").read_text()]
    assert "trained_on_real_and_fake" in cards[1]  # the utility report travels with the data set
    for doc in cards:
        assert "secret_data_root" not in doc and "DOE^JANE" not in doc and str(root) not in doc


def test_the_dataset_card_names_the_rate_test_it_quotes():
    """The gate decides by the beta-binomial p (the calibration's own randomness included); the card called that
    number an "exact binomial p", which is a different, smaller p-value (12 of 64 at rank 3 of 64: 0.0043 vs 3.2e-5)."""
    from dataclasses import asdict

    from synthmed.metrics.privacy_gate import rate_test
    from synthmed.reports.cards import dataset_card

    t = rate_test("pixel", 12, 64, 3, 64, 0.025, 0.8)
    record = {"metrics": {}, "metric_provenance": {}, "reports": {}}
    report = {"audited": True, "gate": "warn", "n_flagged": 12, "n_samples": 64, "passed": False,
              "reasons": ["12 of 64 flagged"], "rate_tests": [asdict(t) | {"power_note": "n = 64"}]}
    text = dataset_card(record, report, "png", 64)
    assert f"exact beta-binomial p = {t.p_value:.3g} (plain binomial p = {t.binomial_p_value:.3g})" in text
    assert "exact binomial p" not in text
