"""Search objectives (issue 21 item 6, issue 12 item 2): direction checked against the metric, objective planned
before any trial trains, the in-domain Frechet distance as the offline objective, val/psnr usable."""

from __future__ import annotations

import pytest

from synthmed import search
from synthmed.metrics import names
from tests.test_hparams_search import SEARCHES, compose_with_hydra
from tests.test_sweeps import SMOKE, runs_of, synthmed


@pytest.mark.parametrize("search_name", SEARCHES)
def test_offline_objective_is_fd_domain_and_said(tmp_path, search_name):
    cfg = compose_with_hydra(tmp_path, [f"hparams_search={search_name}"])  # conftest: TORCH_HOME without weights
    key, note = search.plan_objective(cfg)
    assert key == names.FD_DOMAIN and names.FID in note and "Inception" in note
    assert "fd_domain" in cfg.eval.metrics  # the final evaluation computes the fallback
    search.check_direction(cfg.optimized_metric, cfg.hydra.sweeper.direction)  # the pinned direction agrees


def test_with_weights_the_pinned_objective_stays(tmp_path, torch_home):
    cfg = compose_with_hydra(tmp_path, ["hparams_search=ddpm_optuna"])
    assert search.plan_objective(cfg) == (names.FID, None)


def test_inception_objective_without_fallback_is_refused_naming_the_fetch(tmp_path):
    cfg = compose_with_hydra(tmp_path, ["hparams_search=ddpm_optuna", "optimized_metric_offline=null"])
    with pytest.raises(search.ObjectiveError, match="synthmed weights fetch"):
        search.plan_objective(cfg)


def test_fallback_in_the_other_direction_is_refused(tmp_path):
    cfg = compose_with_hydra(tmp_path, ["hparams_search=ddpm_optuna", "optimized_metric=${metric:RECALL}"])
    with pytest.raises(search.ObjectiveError, match="direction"):
        search.plan_objective(cfg)  # recall (maximize) cannot fall back to fd_domain (minimize)


@pytest.mark.parametrize(("key", "pinned", "ok"), [(names.RECALL, "minimize", False), (names.RECALL, "maximize", True),
                                                   (names.PSNR, "maximize", True), (names.FID, "maximize", False),
                                                   (names.MS_SSIM_DIVERSITY, "minimize", True),
                                                   (names.LATENT_SCALE, "minimize", False)])
def test_direction_is_checked_against_the_metric(key, pinned, ok):
    if ok:
        search.check_direction(key, pinned)
    else:
        with pytest.raises(search.ObjectiveError):
            search.check_direction(key, pinned)


def test_psnr_is_a_plannable_vae_objective(tmp_path):
    cfg = compose_with_hydra(tmp_path, ["hparams_search=vae_optuna", "optimized_metric=${metric:PSNR}",
                                        "hydra.sweeper.direction=maximize"])
    assert search.plan_objective(cfg) == (names.PSNR, None)  # logged by the VAE itself: needs no weights
    assert search.objective_value({names.PSNR: 21.5}, names.PSNR) == 21.5


@pytest.mark.slow
def test_vae_returns_its_logged_psnr(run_root):
    from synthmed.train import train
    from tests.conftest import compose_train

    values = train(compose_train(run_root, ["model=vae", *SMOKE[:1], *SMOKE[2:]]), with_logged=True)  # as a search
    assert names.PSNR in values and values[names.PSNR] > 0  # the last validation's val/psnr


@pytest.mark.slow
def test_wrong_direction_stops_before_any_run(run_root):
    proc = synthmed(["train", "-m", "hparams_search=ddpm_optuna", *SMOKE, "hydra.sweeper.n_trials=1",
                     "optimized_metric=${metric:RECALL}"], run_root)
    assert proc.returncode != 0
    assert "direction" in proc.stderr and "maximize" in proc.stderr, proc.stderr[-2000:]
    _, parents, children = runs_of(run_root)
    assert parents == [] and children == []  # refused before the sweep's parent run or any trial existed
