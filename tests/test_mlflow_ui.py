"""The MLflow UI as the comparison surface: image charts, the Dataset column, source tags, descriptions, a sweep
parent's summary, and (browser test) a real `mlflow ui` over a `-m model=ddpm,gan,vae` sweep in Chromium."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from synthmed.metrics import names
from tests.test_sweeps import SMOKE, runs_of, synthmed


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mlflow_template):
    """A smoke-sized `-m model=ddpm,gan,vae` sweep: one parent, three children."""
    import shutil

    root = tmp_path_factory.mktemp("ui_sweep")
    shutil.copy(mlflow_template, root / "mlflow.db")
    smoke = [o for o in SMOKE if not o.startswith("model.process")]  # gan and vae have no noise process
    proc = synthmed(["train", "-m", "model=ddpm,gan,vae", *smoke], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.mark.slow
def test_runs_carry_what_the_ui_shows(sweep):
    client, parents, children = runs_of(sweep)
    assert len(parents) == 1 and len(children) == 3
    for child in children:
        run = client.get_run(child.info.run_id)
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.name == "phantom2d" and inp.dataset.digest == run.data.tags[
            "synthmed.dataset_fingerprint"][:32]
        assert "/" not in inp.dataset.source  # a format and fingerprint, never a path under the data root
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "synthmed train" and tags["mlflow.source.type"] == "LOCAL"
        assert tags["synthmed.config_hash"][:12] in tags["mlflow.note.content"]
        steps = sorted(h.step for h in client.get_metric_history(run.info.run_id, names.MS_SSIM_DIVERSITY_REAL))
        assert steps, "the real-data reference is logged beside the generated value"
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        assert len([p for p in images if p.endswith(".png") and "samples" in p]) >= 2  # one grid per evaluation
    parent = client.get_run(parents[0].info.run_id)
    best = parent.data.tags["synthmed.sweep.best_run"]
    metric = parent.data.tags["synthmed.sweep.best_metric"]
    assert metric == names.FD_DOMAIN  # no Inception weights in tests: the offline fidelity metric
    values = {c.info.run_id: c.data.metrics[metric] for c in children}
    assert best == min(values, key=values.get)
    table = client.download_artifacts(parent.info.run_id, "sweep/children.md", str(sweep))
    assert all(c.info.run_name in open(table).read() for c in children)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_ui(sweep):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{sweep}/mlflow.db", "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=sweep)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.terminate()
        pytest.fail("mlflow ui did not start within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.xfail(reason="issue 12, unfinished: MLflow 3.17 collapses the sweep's children under the parent row and "
                          "the test does not yet find the row's expand control; on a single run the Dataset cells and "
                          "the Chart switch were checked by hand, the image chart's grids were not", strict=True)
def test_chart_view_shows_one_grid_per_child_and_the_dataset(sweep, mlflow_ui, chromium, tmp_path):
    client = MlflowClient(f"sqlite:///{sweep}/mlflow.db")
    exp = client.get_experiment_by_name("phantom2d")
    fingerprint = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.parentRunId` != ''")[0]
    page = chromium.new_page(viewport={"width": 1600, "height": 1000})
    # MLflow 3 opens an experiment on its GenAI overview: the runs table is /runs (load, not networkidle: it polls)
    page.goto(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs", wait_until="load", timeout=90_000)
    datasets = page.locator("[data-testid=open-dataset-drawer]")  # the Dataset column's cells
    datasets.first.wait_for(timeout=90_000)
    digest = fingerprint.data.tags["synthmed.dataset_fingerprint"][:8]
    assert f"phantom2d ({digest}" in datasets.first.inner_text()
    expand = page.get_by_role("button", name="Expand rows")  # the sweep parent's children, when collapsed
    if expand.count():
        expand.first.click()
    page.locator("label:has(input[value=CHART])").first.click()  # the Table | Chart | Artifacts switch
    page.get_by_placeholder("Search metric charts").fill("samples")  # the image chart, not below the fold
    grids = page.locator("img[src*='get-artifact']")
    grids.first.wait_for(timeout=90_000)
    page.wait_for_timeout(3000)  # every run's grid arrives
    page.screenshot(path=str(tmp_path / "chart_view.png"), full_page=True)
    assert grids.count() >= 3, f"{grids.count()} grid images in the Chart view (screenshot {tmp_path})"
