"""Shared fixtures: composed configs under a temporary root, and a pre-migrated MLflow sqlite store.

A fresh sqlite store costs seconds of schema migrations; one migrated template is copied per test instead.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from synthmed.config import CONF_DIR, register_resolvers

register_resolvers()
logging.getLogger("alembic").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No test sees the user's MLflow server or torch hub cache (tests never touch the network)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SYNTHMED_ROOT", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch_home_empty"))
    yield
    # A test whose code exported a store (Lightning does, on a logger it was not guarded from) must not hand it to
    # the module-scoped fixtures of later tests, which run before this fixture cleans up again.
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """A migrated, empty `mlflow.db`, created once per test session."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def run_root(tmp_path, mlflow_template) -> Path:
    """A `paths.root` with its own copy of the migrated store."""
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    return tmp_path


def save_run_folder(folder: Path, cfg, trainer) -> Path:
    """`<folder>/checkpoints/final.ckpt` + `<folder>/config/config.yaml`: what `synthmed train` records, for tests
    that point a model at an earlier stage (the ldm at its vae). Returns the checkpoint."""
    ckpt = folder / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(ckpt)
    (folder / "config").mkdir(parents=True)
    OmegaConf.save(cfg, folder / "config" / "config.yaml", resolve=True)
    return ckpt


SMOKE_RUN = ["debug=smoke", "model.process.num_inference_steps=2", "trainer.enable_progress_bar=false",
             "callbacks.generation_metrics.n_samples=2", "eval.n_samples=4"]


def train_smoke_run(root: Path, template: Path):
    """One FINISHED smoke DDPM run on the 16 px phantoms in a store of its own under `root`.

    Returns:
        (MlflowClient of the store, the run, the run's composed config).
    """
    from mlflow.tracking import MlflowClient

    from synthmed.train import train

    shutil.copy(template, root / "mlflow.db")
    cfg = compose_train(root, SMOKE_RUN)
    train(cfg)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, run, cfg


def compose_train(root: Path, overrides: list[str] = (), config_name: str = "train"):
    """The composed `train` config as `synthmed train` would see it, with every path under `root`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=[
            f"paths.root={root}", f"paths.output_dir={root}/outputs/job", *overrides])


@pytest.fixture(scope="session")
def weights_home(tmp_path_factory):
    """A TORCH_HOME holding a random FID Inception weights file under pytorch-fid's name (never the real one:
    tests are offline, and both synthmed and pytorch-fid then use identical weights)."""
    from synthmed.metrics import inception

    home = tmp_path_factory.getbasetemp() / "torch_home"
    path = home / "hub" / "checkpoints" / inception.WEIGHTS_FILE
    if not path.exists():
        inception.make_random_fid_weights(path, seed=0)
    return home


@pytest.fixture()
def torch_home(weights_home, monkeypatch):
    """Point TORCH_HOME at `weights_home` for one test."""
    monkeypatch.setenv("TORCH_HOME", str(weights_home))
    return weights_home


@pytest.fixture(scope="session")
def warm_synthmed(tmp_path_factory):
    """Path of a `synthmed` executable that runs each command in a fork of one pre-imported server
    (tests/warm_cli.py): for tests that run many CLI commands through a shell. Shared by the session."""
    import subprocess
    import sys

    from tests import warm_cli

    folder = tmp_path_factory.mktemp("warm")
    sock = str(folder / "s.sock")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, str(repo / "tests" / "warm_cli.py"), sock], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, env=env, cwd=folder)
    if server.stdout.readline().strip() != "ready":
        server.kill()
        raise RuntimeError(f"the warm synthmed server did not start (exit {server.wait()})")
    (folder / "bin").mkdir()
    yield warm_cli.write_shim(str(folder / "bin" / "synthmed"), sock)
    server.terminate()
    server.wait(timeout=30)


CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium, installed by `make test-setup`; Playwright's download cannot work offline


@pytest.fixture(scope="session")
def chromium():
    """A headless Debian Chromium driven by Playwright (sync API), shared by the browser tests of one session.

    Pages are opened per test with `chromium.new_page()`; nothing is fetched from the network.
    """
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} is missing: run `make test-setup` (apt-get install chromium)")
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is present (never in CI, which has no GPU)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
