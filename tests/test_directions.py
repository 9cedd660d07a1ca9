"""Metrics with a target (MS-SSIM diversity): scored by distance to the real data's own value, computed on equal n.

Known-answer generators on the phantom data: an *oracle* (fresh subjects of the same distribution), *pure noise*
(the lowest diversity of all, so the old "lower is better" reading bolded it) and a *collapsed* one (one image,
jittered: diversity near 1). Reports and searches must prefer the oracle to both.
"""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from synthmed import compare as C
from synthmed import search
from synthmed.data.phantom import PhantomDataset
from synthmed.metrics import names
from synthmed.metrics.directions import direction, objective_key, search_direction
from synthmed.metrics.diversity import ms_ssim_diversity
from synthmed.metrics.suite import MetricSuite
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk

N = 24  # images per set: small, and above what 32 px MS-SSIM needs


@pytest.fixture(scope="module")
def sets() -> dict[str, torch.Tensor]:
    real = PhantomDataset("val", size=32, n_val=N + 8).image  # more real images than samples: equal-n matters
    oracle = PhantomDataset("test", size=32, n_test=N).image  # disjoint subjects, same distribution
    noise = torch.rand(N, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    one = PhantomDataset("train", size=32, n_train=1).image[:1]
    collapsed = (one + 0.02 * torch.randn(N, 1, 32, 32, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    return {"real": real, "oracle": oracle, "noise": noise, "collapsed": collapsed}


@pytest.fixture(scope="module")
def scored(sets) -> dict[str, dict[str, float]]:
    suite = MetricSuite(metrics=["ms_ssim_diversity"], diversity_pairs=60)
    return {k: suite(sets[k], sets["real"]).values for k in ("oracle", "noise", "collapsed")}


def test_real_reference_is_the_same_statistic_on_as_many_real_images(sets, scored):
    result = MetricSuite(metrics=["ms_ssim_diversity"], diversity_pairs=60)(sets["oracle"], sets["real"])
    assert result.tags["ms_ssim_diversity.n"] == str(N)
    expected = ms_ssim_diversity(sets["real"][:N], 60, data_range=2.0, seed=0)[0]  # first N of N + 8: equal n
    assert result.values[names.MS_SSIM_DIVERSITY_REAL] == pytest.approx(expected, abs=1e-7)
    gap = abs(result.values[names.MS_SSIM_DIVERSITY] - expected)
    assert result.values[names.MS_SSIM_DIVERSITY_GAP] == pytest.approx(gap, abs=1e-7)


def test_fewer_real_than_fake_scores_both_on_the_smaller_n(sets):
    result = MetricSuite(metrics=["ms_ssim_diversity"], diversity_pairs=60)(sets["oracle"], sets["real"][:10])
    assert result.tags["ms_ssim_diversity.n"] == "10"
    fake = ms_ssim_diversity(sets["oracle"][:10], 60, data_range=2.0, seed=0)[0]
    assert result.values[names.MS_SSIM_DIVERSITY] == pytest.approx(fake, abs=1e-7)


def test_noise_has_the_lowest_diversity_but_not_the_smallest_gap(scored):
    value = {k: v[names.MS_SSIM_DIVERSITY] for k, v in scored.items()}
    gap = {k: v[names.MS_SSIM_DIVERSITY_GAP] for k, v in scored.items()}
    assert value["noise"] < value["oracle"] < value["collapsed"]  # the trap: "lower is better" picks noise
    assert gap["oracle"] < gap["noise"] and gap["oracle"] < gap["collapsed"]


def test_direction_tables():
    assert direction(names.MS_SSIM_DIVERSITY) == "target"
    assert objective_key(names.MS_SSIM_DIVERSITY) == names.MS_SSIM_DIVERSITY_GAP
    assert search_direction(names.MS_SSIM_DIVERSITY) == "minimize"
    assert search_direction(names.RECALL) == "maximize" and search_direction(names.FD_DOMAIN) == "minimize"
    assert search_direction(names.LATENT_SCALE) is None


def test_search_never_chooses_noise(scored):
    key = objective_key(names.MS_SSIM_DIVERSITY)  # what a search with optimized_metric=MS_SSIM_DIVERSITY returns
    trials = {k: search.objective_value(v, key) for k, v in scored.items()}
    assert min(trials, key=trials.get) == "oracle"  # Optuna minimises (search_direction)


def _log_run(client: MlflowClient, exp: str, model: str, values: dict[str, float]) -> None:
    run = client.create_run(exp, run_name=f"{model}-phantom2d", tags={tk.MODEL: model})
    client.log_param(run.info.run_id, "model.name", model)
    client.log_param(run.info.run_id, "seed", "0")
    mt.log_json(client, run.info.run_id, {"step": 10, "metrics": values}, "metrics/final.json")
    client.set_terminated(run.info.run_id, "FINISHED")


def test_compare_never_bolds_noise_and_shows_a_real_data_row(tmp_path, mlflow_template, scored):
    import shutil

    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("targets", artifact_location=(tmp_path / "art").as_uri())
    fidelity = {"noise": 90.0, "oracle": 3.0, "collapsed": 40.0}  # fd_domain: no FID offline, rank by this
    for model, values in [("ddpm", scored["noise"]), ("vae", scored["oracle"]), ("gan", scored["collapsed"])]:
        _log_run(client, exp, model, {**values, names.FD_DOMAIN: fidelity[{"ddpm": "noise", "vae": "oracle",
                                                                            "gan": "collapsed"}[model]]})
    opts = {**C.OPTIONS, "experiment": "targets", "paths.root": str(tmp_path), "log": "false",
            "out": str(tmp_path / "report")}
    result = C.compare(opts)
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    model_of = {row["group"]: row["model"] for row in doc["table"]}
    assert [model_of[g] for g in doc["best"][names.MS_SSIM_DIVERSITY]] == ["vae"]
    assert [model_of[g] for g in doc["best"][names.MS_SSIM_DIVERSITY_GAP]] == ["vae"]
    assert names.MS_SSIM_DIVERSITY_REAL not in doc["best"]  # a reference, not a column to win
    assert doc["ranked_by"] == names.FD_DOMAIN and [r["model"] for r in doc["table"]] == ["vae", "gan", "ddpm"]
    lines = result["table_markdown"].splitlines()
    real_line = next(line for line in lines if line.startswith("| real data"))
    assert f"{scored['oracle'][names.MS_SSIM_DIVERSITY_REAL]:.4g}" in real_line
    noise_line = next(line for line in lines if line.startswith("| ddpm"))
    assert "**" not in noise_line
