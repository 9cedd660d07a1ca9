"""Optuna search spaces (conf/hparams_search/) and cluster launchers: they compose, name real keys, optimise a
metric from names.py in its better direction, and run through the real CLI into MLflow parent/child runs."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from synthmed.config import CONF_DIR
from synthmed.metrics import names
from synthmed.metrics.directions import direction
from synthmed.tracking.runinfo import final_metrics
from tests.test_sweeps import SMOKE, runs_of, synthmed

SEARCHES = sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def compose_with_hydra(root: Path, overrides: list[str]):
    """The `train` config with its `hydra` node (sweeper, launcher), as the CLI would compose it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", return_hydra_config=True,
                       overrides=[f"paths.root={root}", f"paths.output_dir={root}/outputs/job", *overrides])


def _family(model: str) -> str:
    """The `family` class attribute of the module a conf/model file names (diffusion, gan, vae, ...)."""
    module, _, name = OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml")["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name).family


def test_every_model_family_has_a_pinned_search():
    assert {"ddpm_optuna", "gan_optuna", "vae_optuna", "ldm_optuna"} <= set(SEARCHES)
    searched = {_family(s.removesuffix("_optuna")) for s in SEARCHES}
    assert {_family(m) for m in MODELS} <= searched  # a new family needs its own search space


@pytest.mark.parametrize("search", SEARCHES)
def test_search_optimises_a_known_metric_in_its_better_direction(tmp_path, search):
    cfg = compose_with_hydra(tmp_path, [f"hparams_search={search}"])
    assert cfg.optimized_metric in names.all_names().values()  # interpolated from names.py, never retyped
    assert "${metric:" in (CONF_DIR / "hparams_search" / f"{search}.yaml").read_text()
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == direction(cfg.optimized_metric)
    assert cfg.model.name == search.removesuffix("_optuna")  # the search pins its family


@pytest.mark.parametrize("search", SEARCHES)
def test_searched_keys_exist_and_parse(tmp_path, search):
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    cfg = compose_with_hydra(tmp_path, [f"hparams_search={search}"])
    params = cfg.hydra.sweeper.params
    assert len(params) >= 3
    parser = OverridesParser.create()
    for key, space in params.items():
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", f"{search}: no config key {key}"
        override = parser.parse_override(f"{key}={space}")
        assert override.is_sweep_override(), f"{search}: {key}={space} is not a search space"
        create_optuna_distribution_from_override(override)  # raises on a space Optuna cannot sample


def test_slurm_preset_makes_a_sensible_sbatch_script(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake = tmp_path / "bin"  # submitit checks that `srun` exists; the script is only written, never submitted
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_with_hydra(tmp_path, ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4",
                                        "hydra.launcher.partition=gpu"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["_target_"].endswith("SlurmLauncher")
    # The plugin's own mapping (submitit_launcher.py, `launch`): shared keys as they are, others `slurm_`-prefixed.
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path / "sub", cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("_target_", "submitit_folder")})
    script = executor._executor._make_submission_file_text("python -m synthmed.cli train", "uid")
    for line in ("--gpus-per-node=4", "--ntasks-per-node=4", "--time=1440", "--partition=gpu", "--cpus-per-task=8"):
        assert f"#SBATCH {line}" in script, script


@pytest.mark.slow
def test_tiny_optuna_search_through_the_cli(run_root):
    # No Inception weights offline: optimise MS-SSIM diversity (its gap to real: "minimize") instead of FID.
    proc = synthmed(["train", "-m", "hparams_search=ddpm_optuna", *SMOKE, "hydra.sweeper.n_trials=2",
                     "optimized_metric=${metric:MS_SSIM_DIVERSITY}"], run_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parents, children = runs_of(run_root)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    searched = yaml.safe_load((CONF_DIR / "hparams_search" / "ddpm_optuna.yaml").read_text())["hydra"]["sweeper"]
    for child in children:  # every searched key reached the job as an override (and so as a param)
        assert {f"override.{k}" for k in searched["params"]} <= set(child.data.params)
    assert len({c.data.params["override.model.optimizer.lr"] for c in children}) == 2
    results = yaml.safe_load(next(run_root.glob("multirun/*/*/optimization_results.yaml")).read_text())
    # a target metric is searched as its distance to the real data's value (noise must not win)
    assert {c.data.tags["synthmed.search.objective"] for c in children} == {names.MS_SSIM_DIVERSITY_GAP}
    objective = [final_metrics(client, c)[names.MS_SSIM_DIVERSITY_GAP] for c in children]
    assert results["best_value"] == pytest.approx(min(objective))  # Optuna saw what MLflow recorded


@pytest.mark.slow
def test_an_optuna_search_goes_on_past_a_diverged_trial(run_root):
    # lr=1e30 diverges (trainer.nonfinite=fail raises at its first step); the sampler's fixed seed makes the trial
    # order reproducible: the diverged trial is not the last, so the search had to go on past it.
    proc = synthmed(["train", "-m", "hparams_search=vae_optuna", "debug=smoke", "trainer.enable_progress_bar=false",
                     "callbacks.generation_metrics.n_samples=2", "eval.n_samples=4", "eval.metrics=[ms_ssim_diversity]",
                     "optimized_metric=${metric:MS_SSIM_DIVERSITY}", "hydra.sweeper.n_trials=3", "model.kl_weight=1e-4",
                     "model.recon_loss=l1", "model.adversarial_weight=0.0", "model.optimizer.lr=choice(1e-3,1e30)"],
                    run_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parents, children = runs_of(run_root)
    trials = sorted(children, key=lambda c: c.info.start_time)
    lrs = [c.data.params["override.model.optimizer.lr"] for c in trials]
    assert len(trials) == 3 and "1e+30" in lrs[:-1] and "0.001" in lrs, lrs  # a trial ran after the divergence
    for trial, lr in zip(trials, lrs):
        if lr == "1e+30":
            assert trial.info.status == "FAILED"
            assert "NonFiniteError: non-finite training at step" in trial.data.tags["synthmed.error"]
        else:
            assert trial.info.status == "FINISHED" and names.MS_SSIM_DIVERSITY_GAP in final_metrics(client, trial)
    output = proc.stdout + proc.stderr
    assert "Failed experiment: non-finite training at step" in output  # the sweeper told Optuna FAIL
    results = yaml.safe_load(next(run_root.glob("multirun/*/*/optimization_results.yaml")).read_text())
    assert results["best_params"]["model.optimizer.lr"] == 1e-3  # the best trial is a finite one
    assert parents[0].info.status == "FAILED"  # the search finished, but not every trial did: said, not hidden
    assert f"synthmed sweep ended FAILED: {lrs.count('1e+30')} job(s) failed" in proc.stderr


@pytest.mark.slow
def test_submitit_local_sweep_gives_two_children_under_one_parent(run_root):
    proc = synthmed(["train", "-m", *SMOKE, "hydra/launcher=submitit_local", "seed=0,1"], run_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, parents, children = runs_of(run_root)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.params["override.seed"] for c in children) == ["0", "1"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(names.MS_SSIM_DIVERSITY in final_metrics(client, c) for c in children)
    assert list(run_root.glob("multirun/*/*/.submitit/*")), "jobs did not go through submitit"
    assert "synthmed sweep: jobs submitted; their output goes to" in proc.stderr  # not silent: where to look
