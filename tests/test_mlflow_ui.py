"""The MLflow UI as the comparison surface: image charts, the Dataset column, source tags, descriptions, a sweep
parent's summary, and (browser test) a real `mlflow ui` over a `-m model=ddpm,gan,vae` sweep in Chromium."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import parse_qs, urlparse

import pytest

from synthmed.metrics import names
from synthmed.tracking import tags as tk
from synthmed.tracking import ui
from synthmed.tracking.runinfo import GRID_RE
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
def test_chart_view_shows_one_grid_per_child_and_the_dataset(sweep, mlflow_ui, chromium, tmp_path):
    """What a user does: open the experiment, expand the sweep's parent row, read the Dataset column, switch to the
    Chart view, set the `samples` image chart to the last step (MLflow opens it at step 0, where no grid exists)
    with run parameters off, and view it full screen: one grid per child, side by side."""
    from playwright.sync_api import expect

    client, parents, children = runs_of(sweep)
    experiment_id = parents[0].info.experiment_id
    fingerprint = children[0].data.tags[tk.DATASET_FINGERPRINT]
    logged = sorted(int(m.group(1)) for a in client.list_artifacts(children[0].info.run_id, "samples")
                    if (m := GRID_RE.search(a.path)))  # the steps of the grids, as the plain artifacts say
    last = logged[-1]
    page = chromium.new_page(viewport={"width": 1600, "height": 1000})
    # MLflow 3 opens an experiment on its GenAI overview: the runs table is /runs (load, not networkidle: it polls)
    page.goto(f"{mlflow_ui}/#/experiments/{experiment_id}/runs", wait_until="load", timeout=90_000)
    parent_row = page.get_by_role("row").filter(has_text=parents[0].info.run_name)
    parent_row.locator("[role=gridcell][col-id*='Run Name'] button").click(timeout=90_000)  # the +/- expander
    datasets = page.get_by_test_id("open-dataset-drawer")  # the Dataset column's cells, one per child
    expect(datasets).to_have_count(len(children), timeout=30_000)
    assert datasets.all_inner_texts() == [f"phantom2d ({fingerprint[:ui.DIGEST_CHARS]})"] * len(children)

    page.locator("label:has(input[value=CHART])").first.click()  # the Table | Chart | Artifacts switch
    page.get_by_placeholder("Search metric charts").fill(ui.GRID_KEY)
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(has=page.locator(f"h4[title={ui.GRID_KEY}]"))
    card.get_by_test_id("experiment-view-compare-runs-card-menu").click()
    page.get_by_role("menuitem", name="Configure").click()
    edit = page.get_by_role("dialog", name="Edit chart")
    edit.get_by_role("switch", name="Show run parameters").click()  # ~150 params per run hide the grids
    step = edit.get_by_role("slider")
    assert step.get_attribute("aria-valuemax") == str(last)
    step.focus()
    for expected in logged:  # each arrow key moves to the next logged step
        page.keyboard.press("ArrowRight")
        expect(step).to_have_attribute("aria-valuenow", str(expected))
    edit.get_by_role("button", name="Save changes").click()
    expect(edit).to_be_hidden()

    card.locator("[data-component-id=fullscreen_button_chartcard]").click()
    grids = page.get_by_role("dialog", name=ui.GRID_KEY).locator("img[src*='get-artifact']")
    expect(grids).to_have_count(len(children), timeout=30_000)
    shown = {}
    for img in grids.all():
        expect(img).to_be_visible()
        assert img.evaluate("i => i.decode().then(() => i.naturalWidth)") > 0  # the file arrived and decodes
        query = parse_qs(urlparse(img.get_attribute("src")).query)
        shown[query["run_uuid"][0]] = query["path"][0]
    page.screenshot(path=str(tmp_path / "chart_view.png"))
    assert set(shown) == {c.info.run_id for c in children}, f"screenshot {tmp_path}"
    assert all(path.startswith(f"images/{ui.GRID_KEY}+step+{last}+") for path in shown.values()), shown


class _RacingClient:
    """A real client whose first `log_inputs` calls fail as the loser of a parallel insert does on the server."""

    def __init__(self, client, failures: int, message: str):
        self.client, self.failures, self.message, self.calls = client, failures, message, 0

    def log_inputs(self, run_id, inputs):
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls <= self.failures:
            raise MlflowException(self.message)
        return self.client.log_inputs(run_id, inputs)


DUPLICATE = ('BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique constraint '
             '"dataset_pk" DETAIL: Key (experiment_id, name, digest)=(1, phantom2d, e03b14) already exists.')


def test_a_sweep_job_that_loses_the_dataset_race_still_links_the_dataset(run_root):
    """The parallel jobs of a sweep insert the same data set row at once; the losers (a unique-key error, as
    PostgreSQL reports it through the server) retry and link the existing row, anything else is raised at once."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    run = client.create_run(client.create_experiment("race"))
    racing = _RacingClient(client, failures=2, message=DUPLICATE)
    ui.log_dataset(racing, run.info.run_id, "phantom2d", "e03b1409" * 8, "PhantomDataset", "train")
    assert racing.calls == 3
    (linked,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert (linked.dataset.name, linked.dataset.digest) == ("phantom2d", ("e03b1409" * 8)[:ui.DIGEST_CHARS])
    other = _RacingClient(client, failures=1, message="RESOURCE_DOES_NOT_EXIST: run not found")
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        ui.log_dataset(other, run.info.run_id, "phantom2d", "e03b1409" * 8, "PhantomDataset", "train")
    assert other.calls == 1
    endless = _RacingClient(client, failures=ui.DATASET_ATTEMPTS, message=DUPLICATE)
    with pytest.raises(MlflowException, match="dataset_pk"):
        ui.log_dataset(endless, run.info.run_id, "phantom2d", "e03b1409" * 8, "PhantomDataset", "train")
    assert endless.calls == ui.DATASET_ATTEMPTS
