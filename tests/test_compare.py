"""`synthmed compare`: smoke runs of two models (one with two seeds) read back from MLflow into a report."""

from __future__ import annotations

import re
import shutil
from statistics import mean, stdev

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from synthmed import compare as C
from synthmed.metrics import names
from synthmed.tracking import tags as tk
from synthmed.tracking.runinfo import final_metrics
from synthmed.train import train
from tests.conftest import compose_train

QUIET = ["debug=smoke", "trainer.enable_progress_bar=false", "callbacks.generation_metrics.n_samples=2",
         "eval.n_samples=4"]
DIFFUSION = [*QUIET, "model.process.num_inference_steps=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template):
    """ddpm seeds 0 and 1, gan seed 0 (all FINISHED), a sweep parent and a FAILED run, in experiment phantom2d."""
    root = tmp_path_factory.mktemp("compare_root")
    shutil.copy(mlflow_template, root / "mlflow.db")
    for i, overrides in enumerate([[*DIFFUSION, "seed=0"], [*DIFFUSION, "seed=1"], ["model=gan", *QUIET]]):
        cfg = compose_train(root, overrides)
        cfg.paths.output_dir = str(root / "outputs" / f"job{i}")
        train(cfg)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("phantom2d").experiment_id
    parent = client.create_run(exp, run_name="sweep-x", tags={"synthmed.sweep": "parent"})
    client.set_terminated(parent.info.run_id, "FINISHED")
    evaluation = client.create_run(exp, run_name="ddpm-eval", tags={tk.MODEL: "ddpm", tk.EVALUATES: "x"})
    client.set_terminated(evaluation.info.run_id, "FINISHED")
    failed = client.create_run(exp, run_name="ddpm-failed", tags={tk.MODEL: "ddpm"})
    client.log_metric(failed.info.run_id, names.TRAIN_LOSS, 1.0, step=0)
    client.set_terminated(failed.info.run_id, "FAILED")
    return root, client


def opts(root, **kw) -> dict:
    return {**C.OPTIONS, "experiment": "phantom2d", "paths.root": str(root), "log": "false", **kw}


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    root, _ = store
    out = tmp_path_factory.mktemp("report")
    return C.compare(opts(root, out=str(out), log="true")), out


def test_seeds_of_one_config_form_one_row_with_mean_and_std(store, report):
    _, client = store
    result, _ = report
    rows = {r["model"]: r for r in result["table"]}
    assert set(rows) == {"ddpm", "gan"}
    assert rows["ddpm"]["n"] == 2 and sorted(rows["ddpm"]["seeds"]) == ["0", "1"] and rows["gan"]["n"] == 1
    values = [final_metrics(client, client.get_run(r))[names.MS_SSIM_DIVERSITY] for r in rows["ddpm"]["runs"]]
    assert values[0] != values[1]  # the seed matters, so a mean over seeds is informative
    cell = rows["ddpm"]["metrics"][names.MS_SSIM_DIVERSITY]
    assert cell["mean"] == pytest.approx(mean(values)) and cell["std"] == pytest.approx(stdev(values))
    assert cell["n"] == 2 and rows["gan"]["metrics"][names.MS_SSIM_DIVERSITY]["std"] is None


def test_markdown_table_is_paper_ready(report):
    result, out = report
    lines = result["table_markdown"].splitlines()
    columns = lines[0].strip("| ").split(" | ")
    assert columns[:3] == ["model", "config", "n"] and f"{names.MS_SSIM_DIVERSITY} ≈real" in columns
    assert all(c.split(" ")[0] in names.all_names().values() for c in columns[3:])  # metric keys as columns
    assert lines[1] == "| --- | --- | ---: |" + " ---: |" * (len(columns) - 3)
    assert len(lines) == 5 and all(line.count("|") == len(columns) + 1 for line in lines)
    assert lines[-1].startswith("| real data")  # the reference row of the target metrics
    assert names.MS_SSIM_DIVERSITY_REAL not in lines[0]  # a reference, not a column
    ddpm = next(line for line in lines if line.startswith("| ddpm")).strip("| ").split(" | ")
    diversity = ddpm[columns.index(f"{names.MS_SSIM_DIVERSITY} ≈real")]
    assert ddpm[:3] == ["ddpm", "–", "2"] and re.fullmatch(r"(\*\*)?[0-9.e-]+ ± [0-9.e-]+(\*\*)?", diversity)
    assert result["table_markdown"] in (out / "report.md").read_text()
    diversity_cells = [line.strip("| ").split(" | ")[columns.index(f"{names.MS_SSIM_DIVERSITY} ≈real")]
                       for line in lines[2:]]
    assert sum(cell.startswith("**") for cell in diversity_cells) == 1  # the best row of a column in bold


def test_curves_and_final_grids_are_drawn(report):
    result, out = report
    md = (out / "report.md").read_text()
    for key in (names.TRAIN_LOSS, names.TRAIN_LOSS_G, names.MS_SSIM_DIVERSITY):
        png = out / "curves" / f"{key.replace('/', '_')}.png"
        assert Image.open(png).size[0] > 300 and f"]({png.relative_to(out).as_posix()})" in md
    grids = sorted((out / "grids").glob("*.png"))
    assert len(grids) == 3  # one per FINISHED run
    assert md.count("step 4, run") == 3  # the highest-step grid of each run (smoke: steps 2 and 4)


def test_html_is_self_contained(report):
    _, out = report
    page = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == len(list((out / "curves").glob("*.png"))) + 3
    assert "<b>" in page and names.MS_SSIM_DIVERSITY in page


def test_parents_and_unfinished_runs_are_skipped_unless_asked(store, tmp_path):
    root, _ = store
    default, skipped = C.select_runs(store[1], opts(root))
    assert {r.info.run_name for r in default}.isdisjoint({"sweep-x", "ddpm-failed", "ddpm-eval"})
    assert any(note.startswith("ddpm-eval: an evaluation of x") for note in skipped)
    everything, _ = C.select_runs(store[1], opts(root, include_unfinished="true", include_parents="true"))
    assert {"sweep-x", "ddpm-failed"} <= {r.info.run_name for r in everything}
    result = C.compare(opts(root, out=str(tmp_path), include_unfinished="true"))
    assert sum(r["n"] for r in result["table"]) == 4
    assert "FAILED" in (tmp_path / "report.md").read_text()


def test_report_is_logged_to_a_tagged_run_and_not_compared_again(store, report, tmp_path):
    root, client = store
    result, _ = report
    logged = client.get_run(result["report_run_id"])
    assert logged.data.tags[tk.REPORT] == "compare" and logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "phantom2d"
    files = {a.path for a in client.list_artifacts(logged.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/report.json", "report/grids"} <= files
    again = C.compare(opts(root, out=str(tmp_path)))
    assert sum(r["n"] for r in again["table"]) == 3
    assert "a report" in (tmp_path / "report.md").read_text()


def test_runs_can_be_picked_by_id_or_config_hash(store, report, tmp_path):
    root, client = store
    result, _ = report
    ddpm = next(r for r in result["table"] if r["model"] == "ddpm")["runs"][0]
    gan = next(r for r in result["table"] if r["model"] == "gan")["runs"][0]
    gan_hash = client.get_run(gan).data.tags[tk.CONFIG_HASH][:12]
    picked = C.compare(opts(root, out=str(tmp_path), runs=f"{ddpm},{gan_hash}"))
    assert sorted(r["runs"][0] for r in picked["table"]) == sorted([ddpm, gan])


def test_command_line(store, tmp_path, capsys):
    root, _ = store
    assert C.main(["experiment=phantom2d", f"paths.root={root}", f"out={tmp_path}", "log=false"]) == 0
    printed = capsys.readouterr().out
    assert "| model | config | n |" in printed and str(tmp_path / "report.html") in printed
    assert C.main(["experiment=nope", f"paths.root={root}", "log=false"]) == 2
    with pytest.raises(SystemExit, match="unknown argument"):
        C.main(["experment=phantom2d"])


class _Run:  # the parts of an MLflow Run that grouping reads
    def __init__(self, model):
        self.data = type("D", (), {"tags": {tk.MODEL: model}})()


@pytest.mark.parametrize("data_seed", ["0", "7"])
def test_grouping_ignores_the_seed_and_its_interpolations_only(data_seed):
    def entry(seed, lr="0.0002", model="ddpm"):
        flat = {"seed": seed, "dataset.datamodule.seed": seed, "dataset.datamodule.dataset.seed": data_seed,
                "model.optimizer.lr": lr}
        return C.Entry(_Run(model), {}, seed, flat)

    groups = C.group_entries([entry("0"), entry("1"), entry("2", lr="0.001"), entry("0", model="gan")])
    assert [len(g.entries) for g in groups] == [2, 1, 1]
    assert [g.label for g in groups] == ["optimizer.lr=0.0002", "optimizer.lr=0.001", ""]
    other_data = C.group_entries([entry("0"), C.Entry(_Run("ddpm"), {}, "1", {
        "seed": "1", "dataset.datamodule.seed": "1", "dataset.datamodule.dataset.seed": "99",
        "model.optimizer.lr": "0.0002"})])
    assert len(other_data) == 2  # a different data seed is a different configuration
