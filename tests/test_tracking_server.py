"""A team's tracking server, for real: `synthmed server` starts PostgreSQL (initdb as an unprivileged user) and
`mlflow server` with proxied artifacts on 127.0.0.1; sweeps, compare, reproduce, a two-process Optuna search, a
server on a given database (`--db-url`) and a run that outlives two server restarts all go through it. No mock: the
same processes a lab would run."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from synthmed import server as srv
from synthmed.metrics import names
from synthmed.tracking import tags as tk
from tests.conftest import SMOKE_RUN, compose_train
from tests.test_sweeps import SMOKE

pytestmark = pytest.mark.slow
N_JOBS = 8  # parallel sweep jobs (joblib launcher), as the issue asks
# Jobs as cheap as a job that still trains, validates, draws grids and is evaluated: two steps, and only the metric
# the tests read (MS-SSIM diversity; no in-domain encoder). Most of a job's cost is its worker importing torch.
JOB = [*SMOKE, "trainer.max_steps=2", "eval.metrics=[ms_ssim_diversity]",
       "callbacks.generation_metrics.metrics=[ms_ssim_diversity]"]


@dataclass
class Team:
    """A running `synthmed server` (its foreground process) and what clients need."""

    root: Path
    port: int
    args: tuple[str, ...] = ()  # more `synthmed server` options (e.g. --db-url)
    proc: subprocess.Popen | None = None
    banner: str = ""

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Client environment: the Optuna storage password as `PGPASSWORD` (libpq reads it), as the banner says."""
        return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                "PGPASSWORD": (self.root / "postgres.password").read_text().strip()}

    @property
    def pg_port(self) -> int:
        """The local cluster's port (kept across restarts in the server folder)."""
        return int((self.root / "server" / "pg_port").read_text())

    def optuna_storage(self) -> str:
        """The storage URL from the banner (the line a user copies)."""
        [line] = [w for w in self.banner.split() if w.startswith("hydra.sweeper.storage=")]
        return line.split("=", 1)[1]

    def start(self, timeout: float = 240.0) -> None:
        cmd = [sys.executable, "-m", "synthmed.cli", "server", "--root", str(self.root), "--port", str(self.port),
               *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        got, deadline = [], time.monotonic() + timeout
        while not any(x.startswith("stop:") for x in got):
            try:
                got.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                self.proc.kill()
                raise TimeoutError("synthmed server did not print its banner:\n" + "".join(got)) from None
            if self.proc.poll() is not None and lines.empty():
                raise RuntimeError("synthmed server exited:\n" + "".join(got))
        self.banner = "".join(got)

    def stop(self) -> None:
        """`synthmed server stop` (what `make server-stop` runs); the foreground process then exits 0."""
        assert srv.main(["stop", "--root", str(self.root)]) == 0
        assert self.proc.wait(timeout=120) == 0


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The in-process trainings (reproduce, the outage runs) on one thread, as the sweep's jobs run: tiny
    convolutions are several times faster so on a busy machine; restored for the tests that follow."""
    from synthmed.metrics.domain import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="module")
def team():
    # pytest's tmp folders are private to root; PostgreSQL's own user must be able to enter the root.
    root = Path(tempfile.mkdtemp(prefix="synthmed-team-"))
    root.chmod(0o755)
    team = Team(root, srv.free_port())
    team.start()
    try:
        yield team
    finally:
        if team.proc is not None and team.proc.poll() is None:
            team.stop()
        shutil.rmtree(root, ignore_errors=True)


def synthmed(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "synthmed.cli", *args, f"paths.root={cwd}"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def runs(client: MlflowClient, experiment: str = "phantom2d"):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def sweep(team):
    """N_JOBS parallel jobs (joblib launcher) of one sweep, logging to the server."""
    work = team.root / "work-sweep"
    seeds = ",".join(str(s) for s in range(N_JOBS))
    finish(synthmed(["train", "-m", *JOB, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={N_JOBS}",
                     f"seed={seeds}", f"logger.tracking_uri={team.uri}"], work, team.env))
    return work


def test_banner_names_uri_ui_tunnel_and_optuna_storage(team):
    assert f"MLFLOW_TRACKING_URI={team.uri}" in team.banner
    assert f"ssh -N -L {team.port}:127.0.0.1:{team.port} " in team.banner
    assert team.optuna_storage().startswith("postgresql+psycopg://synthmed@127.0.0.1:")
    assert srv.healthy(team.uri)
    data = team.root / "postgres" / "data"
    assert (data / "PG_VERSION").is_file() and data.stat().st_uid != 0  # not run as root
    assert oct((team.root / "postgres.password").stat().st_mode)[-3:] == "600"


def test_parallel_sweep_jobs_log_everything_through_the_server(team, sweep):
    client = MlflowClient(team.uri)
    found = runs(client)
    parents = [r for r in found if r.data.tags.get(tk.SWEEP) == "parent"]
    children = [r for r in found if tk.PARENT_RUN in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == N_JOBS and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags[tk.PARENT_RUN] for c in children} == {parents[0].info.run_id}
    assert sorted(int(c.data.params["override.seed"]) for c in children) == list(range(N_JOBS))
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, names.TRAIN_LOSS)] == [0, 1]
        assert names.MS_SSIM_DIVERSITY in child.data.metrics
        grids = [a.path for a in client.list_artifacts(child.info.run_id, "samples")]
        assert grids, child.info.run_id
        # Downloaded through the server (mlflow-artifacts:), byte-equal to what the server stored.
        local = Path(client.download_artifacts(child.info.run_id, grids[-1], str(team.root / "dl")))
        stored = list((team.root / "mlartifacts").rglob(f"{child.info.run_id}/artifacts/{grids[-1]}"))
        assert len(stored) == 1 and local.read_bytes() == stored[0].read_bytes()
        assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get_run(children[0].info.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    assert not (sweep / "mlflow.db").exists() and not (sweep / "mlartifacts").exists()  # nothing local


def test_compare_and_reproduce_against_the_server(team, sweep, capsys):
    from synthmed import compare, reproduce

    out = team.root / "report"
    assert compare.main(["experiment=phantom2d", f"tracking_uri={team.uri}", f"paths.root={team.root}",
                         f"out={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert sum(row["n"] for row in report["table"]) == N_JOBS  # the seeds: one configuration, n = N_JOBS
    client = MlflowClient(team.uri)
    [logged] = [r for r in runs(client) if r.data.tags.get(tk.REPORT) == "compare"]
    assert "report/report.html" in {a.path for a in client.list_artifacts(logged.info.run_id, "report")}

    child = next(r for r in runs(client) if r.data.params.get("override.seed") == "0")
    ref = child.data.tags[tk.CONFIG_HASH][:12]
    # The default tolerance (1e-6): the sweep job ran in a joblib worker with OMP_NUM_THREADS=1, this re-run in the
    # test process on one thread too (_one_thread); a different thread count moves float sums by ~1e-8.
    assert reproduce.main([ref, f"tracking_uri={team.uri}", f"paths.root={team.root / 'work-repro'}"]) == 0, \
        capsys.readouterr().out[-3000:]
    [again] = [r for r in runs(client) if r.data.tags.get(tk.REPRODUCES) == child.info.run_id]
    assert again.info.status == "FINISHED" and again.data.tags[tk.REPRODUCE_VERDICT] == "pass"


def test_two_processes_add_trials_to_one_optuna_study_in_postgresql(team):
    import optuna

    storage = team.optuna_storage()
    # The search's offline objective (fd_domain) is the one final metric a trial needs.
    trial = [*SMOKE, "trainer.max_steps=2", "eval.metrics=[fd_domain]",
             "callbacks.generation_metrics.metrics=[ms_ssim_diversity]"]
    args = ["train", "-m", "hparams_search=ddpm_optuna", *trial, "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=team", f"logger.tracking_uri={team.uri}"]
    procs = [synthmed(args, team.root / f"work-optuna{i}", team.env) for i in range(2)]
    for proc in procs:
        finish(proc)
    os.environ["PGPASSWORD"] = team.env["PGPASSWORD"]
    try:
        study = optuna.load_study(study_name="team", storage=storage)
    finally:
        os.environ.pop("PGPASSWORD")
    assert len(study.trials) == 4  # 2 + 2: none lost, none counted twice
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    client = MlflowClient(team.uri)
    searched = [r for r in runs(client) if "override.model.optimizer.lr" in r.data.params]
    assert len(searched) == 4 and all(r.info.status == "FINISHED" for r in searched)
    values = sorted(t.value for t in study.trials)
    assert values == sorted(r.data.metrics[r.data.tags[tk.SEARCH_OBJECTIVE]] for r in searched)


def test_a_given_database_serves_without_initdb_and_stays_up_after_stop(team, monkeypatch):
    """`--db-url`: a second `synthmed server` on an existing database (the team's own `mlflow` one, already
    migrated: two servers on one store) makes no cluster; the URL's password never reaches MLflow's command line;
    what it logs is read back through the first server and from the database; `server stop` stops MLflow only."""
    import psycopg

    password = team.env["PGPASSWORD"]
    monkeypatch.delenv("PGPASSWORD", raising=False)  # the server gets the password from the URL alone
    root = Path(tempfile.mkdtemp(prefix="synthmed-given-"))
    given = Team(root, srv.free_port(),
                 ("--db-url", f"postgresql://{srv.PG_USER}:{password}@127.0.0.1:{team.pg_port}/mlflow", "--workers", "1"))
    try:
        given.start()
        mlflow_pid = json.loads(srv.state_file(root).read_text())["mlflow_pid"]
        cmdline = Path(f"/proc/{mlflow_pid}/cmdline").read_bytes().split(b"\0")
        assert f"postgresql+psycopg://{srv.PG_USER}@127.0.0.1:{team.pg_port}/mlflow".encode() in cmdline
        assert not any(password.encode() in arg for arg in cmdline)
        assert not (root / "postgres").exists() and "Optuna:" not in given.banner  # no initdb, no cluster of its own

        client = MlflowClient(given.uri)
        run_id = client.create_run(client.create_experiment("given")).info.run_id
        for step, loss in enumerate((0.5, 0.25)):
            client.log_metric(run_id, names.TRAIN_LOSS, loss, step=step)
        (root / "note.txt").write_text("logged through --db-url\n")
        client.log_artifact(run_id, str(root / "note.txt"))
        client.set_terminated(run_id)
        assert Path(client.download_artifacts(run_id, "note.txt", str(root / "dl"))).read_text() == \
            "logged through --db-url\n"
    finally:
        if given.proc is not None and given.proc.poll() is None:
            given.stop()
        shutil.rmtree(root, ignore_errors=True)
    first = MlflowClient(team.uri)  # the team's server, on the same database, still up
    assert first.get_run(run_id).info.status == "FINISHED"
    assert [(m.step, m.value) for m in first.get_metric_history(run_id, names.TRAIN_LOSS)] == [(0, 0.5), (1, 0.25)]
    with psycopg.connect(host="127.0.0.1", port=team.pg_port, user=srv.PG_USER, password=password,
                         dbname="mlflow") as conn:
        assert conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchall() == [("FINISHED",)]


def test_a_run_rides_out_a_short_outage_and_resumes_after_a_long_one(team, monkeypatch):
    """The server (MLflow and PostgreSQL) stops twice during one run. At step 1 it is back within seconds: the step's
    metrics wait in MLflow's retries (exponential backoff) and are logged, nothing lost. At step 2 it stays down
    longer than the retries last: training fails, its checkpoint stays on disk; once the server is back, resume=
    continues the same MLflow run to the metrics of a run that was never interrupted."""
    from pytorch_lightning.loggers import MLFlowLogger

    from synthmed.train import train

    # Retries after 0, 2, 4, 8, 16, 32, 64, 120... s: minutes of patience for a restart that takes seconds.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "10")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    overrides = [*SMOKE_RUN, f"logger.tracking_uri={team.uri}", "experiment_name=outage",
                 "eval.metrics=[ms_ssim_diversity]", "callbacks.generation_metrics.metrics=[ms_ssim_diversity]"]
    reference = train(compose_train(team.root / "work-ref", overrides))
    [ref_run] = runs(MlflowClient(team.uri), "outage")

    original = MLFlowLogger.log_metrics
    short: dict[str, object] = {}  # the short outage: its restart thread, when the restart began, what went wrong

    def restart_soon() -> None:
        time.sleep(3)  # down for a few seconds, then the restart's own time
        short["restart_began"] = time.monotonic()
        try:
            team.start()
        except Exception as err:  # noqa: BLE001 - reported by the test, not lost in a thread
            short["error"] = err

    def outages(self, metrics, step=None):
        if names.TRAIN_LOSS in metrics and step == 1:
            team.stop()
            short["thread"] = threading.Thread(target=restart_soon)
            short["thread"].start()
            original(self, metrics, step)  # retried until the server is back
            short["logged"] = time.monotonic()
            return None
        if names.TRAIN_LOSS in metrics and step == 2:
            short["thread"].join()
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the long outage: retries spent at once
            team.stop()
        return original(self, metrics, step)

    monkeypatch.setattr(MLFlowLogger, "log_metrics", outages)
    work = team.root / "work-outage"
    with pytest.raises(Exception):  # noqa: B017 - whichever MLflow call meets the stopped server first
        train(compose_train(work, overrides))
    assert "error" not in short, short.get("error")
    assert short["logged"] > short["restart_began"]  # step 1's metrics waited out the outage
    assert (work / "outputs" / "job" / "checkpoints" / "on_exception.ckpt").is_file()
    monkeypatch.setattr(MLFlowLogger, "log_metrics", original)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "10")

    team.start()
    client = MlflowClient(team.uri)
    [cut] = [r for r in runs(client, "outage") if r.info.run_id != ref_run.info.run_id]
    assert cut.info.status == "RUNNING"  # it could not even say it failed: resume= accepts it
    resumed = train(compose_train(work, [*overrides, f"resume={cut.info.run_id}"]))
    assert resumed == reference  # final evaluation, bit-equal
    done = client.get_run(cut.info.run_id)
    assert done.info.status == "FINISHED"
    ref_loss = {m.step: m.value for m in client.get_metric_history(ref_run.info.run_id, names.TRAIN_LOSS)}
    cut_loss = {m.step: m.value for m in client.get_metric_history(cut.info.run_id, names.TRAIN_LOSS)}
    # Every logged step has the uninterrupted run's loss at the same step (the step count survives the failed
    # logging: callbacks/checkpoint.py); step 1, logged across the short outage, is there once; only step 2, which
    # met the long one, is missing.
    assert [m.step for m in client.get_metric_history(cut.info.run_id, names.TRAIN_LOSS)].count(1) == 1
    assert cut_loss.items() <= ref_loss.items() and set(ref_loss) - set(cut_loss) == {2}
