"""Store checks before any work: sqlite on a network file system is refused, a tracking server that is down is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthmed.server import free_port, sqlalchemy_url
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import store
from tests.conftest import compose_train

# /proc/mounts as a cluster node shows it: the lab share over NFS, a scratch Lustre, a local disk mounted inside the
# share, a CIFS share whose name has a space (written \040), a GPFS project space, and an NFS share whose name is not
# ASCII (written as UTF-8, unescaped).
MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
fileserver:/export/lab /shared nfs4 rw,relatime,vers=4.2 0 0
/dev/nvme0n1 /shared/local-ssd xfs rw,relatime 0 0
10.0.0.5@tcp:/scratch /scratch lustre rw,flock 0 0
//nas/team\\040data /mnt/team\\040data cifs rw,vers=3.0 0 0
gpfs0 /gpfs/projects gpfs rw,relatime 0 0
fileserver:/export/données /mnt/données nfs4 rw,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
"""


@pytest.mark.parametrize(("path", "expected"), [
    ("/shared/lab/mlflow.db", "nfs4 (/shared)"),
    ("/shared/local-ssd/mlflow.db", None),           # a local disk mounted inside the share is local
    ("/scratch/u1/runs/mlflow.db", "lustre (/scratch)"),
    ("/mnt/team data/mlflow.db", "cifs (/mnt/team data)"),
    ("/gpfs/projects/x/mlflow.db", "gpfs (/gpfs/projects)"),
    ("/mnt/données/runs/mlflow.db", "nfs4 (/mnt/données)"),  # a unicode_escape decode missed it
    ("/sharedfolder/mlflow.db", None),               # a name that merely starts like a mount point
    ("/home/u1/mlflow.db", None),
])
def test_network_file_systems_are_found_by_the_mount_holding_the_path(path, expected):
    assert store.network_fs(Path(path), MOUNTS) == expected


def test_sqlite_on_nfs_is_refused_with_the_way_out_and_the_override_accepts_it():
    uri = "sqlite:////shared/lab/mlflow.db"
    with pytest.raises(ValueError, match="network file system, nfs4") as err:
        store.refuse_network_sqlite(uri, mounts=MOUNTS)
    assert "synthmed server" in str(err.value) and "logger.allow_network_sqlite=true" in str(err.value)
    store.refuse_network_sqlite(uri, allow=True, mounts=MOUNTS)
    store.refuse_network_sqlite("sqlite:////home/u1/mlflow.db", mounts=MOUNTS)
    store.refuse_network_sqlite("http://127.0.0.1:5000", mounts=MOUNTS)  # a server is what we ask for


def test_the_config_key_reaches_the_check(tmp_path, monkeypatch):
    """`logger.allow_network_sqlite` of the composed config, with paths.root on a (faked) NFS mount."""
    fake = tmp_path / "mounts"
    fake.write_text(MOUNTS + f"server:/x {tmp_path} nfs rw 0 0\n")
    monkeypatch.setattr(store, "MOUNTS", str(fake))
    with pytest.raises(ValueError, match=str(tmp_path / "mlflow.db")):
        mt.check_store(compose_train(tmp_path))
    assert mt.check_store(compose_train(tmp_path, ["logger.allow_network_sqlite=true"])).startswith("sqlite:///")
    logger_args = mt.lightning_logger_config(compose_train(tmp_path).logger)
    assert "allow_network_sqlite" not in logger_args  # synthmed's key never reaches MLFlowLogger


def test_train_with_a_server_that_is_down_fails_before_training_and_names_it(tmp_path):
    from synthmed.train import train

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = compose_train(tmp_path, ["debug=smoke", f"logger.tracking_uri={uri}"])
    with pytest.raises(ConnectionError, match=f"tracking server {uri} does not answer") as err:
        train(cfg)
    assert "synthmed server" in str(err.value)
    assert not (tmp_path / "outputs").exists()  # no data loaded, no checkpoint folder, nothing trained


def test_a_bare_postgresql_url_gets_the_installed_driver():
    import sqlalchemy

    url = sqlalchemy_url("postgresql://u@db.lab:5432/mlflow")
    assert url == "postgresql+psycopg://u@db.lab:5432/mlflow"
    assert sqlalchemy.engine.make_url(url).get_dialect().driver == "psycopg"  # SQLAlchemy loads psycopg 3 for it
    assert sqlalchemy_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"  # an explicit driver stays


def test_a_given_database_url_keeps_its_password_off_the_command_line():
    from sqlalchemy.engine import make_url

    from synthmed.server import given_database

    store, password = given_database("postgresql://lab:p%40ss@db.lab:5432/mlflow?sslmode=require")
    assert password == "p@ss"  # decoded as libpq needs it in PGPASSWORD
    parsed = make_url(store)
    assert parsed.password is None and "p%40ss" not in store and "p@ss" not in store
    assert (parsed.drivername, parsed.username, parsed.host, parsed.port, parsed.database, dict(parsed.query)) == \
        ("postgresql+psycopg", "lab", "db.lab", 5432, "mlflow", {"sslmode": "require"})
    assert given_database("postgresql://lab@db.lab/mlflow") == ("postgresql+psycopg://lab@db.lab/mlflow", None)
    for bad in ("mysql://lab@db.lab/mlflow", "postgresql://lab@db.lab", "db.lab:5432/mlflow"):
        with pytest.raises(ValueError, match="--db-url .*expected postgresql://USER"):
            given_database(bad)


def test_server_refuses_an_unreachable_database_or_a_missing_auth_app_before_starting_anything(tmp_path, capsys,
                                                                                                monkeypatch):
    import sys

    from synthmed import server as srv

    url = f"postgresql://lab:secret-pw@127.0.0.1:{free_port()}/mlflow"  # nothing listens there
    assert srv.main(["--root", str(tmp_path), "--port", str(free_port()), "--db-url", url]) == 2
    err = capsys.readouterr().err
    assert "--db-url postgresql+psycopg://lab@127.0.0.1" in err and "refuses the connection" in err
    assert "secret-pw" not in err
    monkeypatch.setitem(sys.modules, "mlflow.server.auth", None)  # as when mlflow[auth]'s Flask-WTF is missing
    assert srv.main(["--root", str(tmp_path), "--port", str(free_port()), "--basic-auth"]) == 2
    assert "mlflow[auth]" in capsys.readouterr().err
    assert not (tmp_path / "postgres").exists() and not (tmp_path / "server" / "mlflow.log").exists()


@pytest.fixture
def one_torch_thread():
    """Tiny convolutions run several times faster on one thread on a busy machine; restored afterwards."""
    from synthmed.metrics.domain import one_thread

    with one_thread():
        yield


@pytest.mark.slow
def test_a_step_whose_metrics_could_not_be_logged_keeps_its_index_after_resume(run_root, monkeypatch, one_torch_thread):
    """The tracking store fails while logging step 2 (what a dropped server does once MLflow's retries are spent):
    the run ends FAILED with its checkpoint on disk; resumed, it logs step 3 as step 3 and ends with the final
    metrics of an uninterrupted run."""
    from mlflow.tracking import MlflowClient
    from pytorch_lightning.loggers import MLFlowLogger

    from synthmed.metrics import names
    from synthmed.train import train
    from tests.conftest import SMOKE_RUN

    # One final metric (no in-domain encoders to train): the test is about the step index, not the metrics.
    job = [*SMOKE_RUN, "eval.metrics=[ms_ssim_diversity]", "callbacks.generation_metrics.metrics=[ms_ssim_diversity]"]
    reference = train(compose_train(run_root / "ref", [*job, f"paths.root={run_root}"]))
    original = MLFlowLogger.log_metrics

    def drop_step_2(self, metrics, step=None):
        if step == 2 and names.TRAIN_LOSS in metrics:
            raise ConnectionError("tracking server went away")
        return original(self, metrics, step)

    monkeypatch.setattr(MLFlowLogger, "log_metrics", drop_step_2)
    cut_cfg = compose_train(run_root, job)
    with pytest.raises(ConnectionError):
        train(cut_cfg)
    monkeypatch.setattr(MLFlowLogger, "log_metrics", original)
    assert (Path(cut_cfg.paths.output_dir) / "checkpoints" / "on_exception.ckpt").is_file()
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    ref_run, cut = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                      order_by=["attributes.start_time ASC"])
    assert cut.info.status == "FAILED"
    assert train(compose_train(run_root, [*job, f"resume={cut.info.run_id}"])) == reference
    assert client.get_run(cut.info.run_id).info.status == "FINISHED"
    history = {r.info.run_id: {m.step: m.value for m in client.get_metric_history(r.info.run_id, names.TRAIN_LOSS)}
               for r in (ref_run, cut)}
    ref_loss, cut_loss = history[ref_run.info.run_id], history[cut.info.run_id]
    assert cut_loss.items() <= ref_loss.items() and set(ref_loss) - set(cut_loss) == {2}


def test_the_cluster_password_is_never_readable_by_others(tmp_path, monkeypatch):
    """`Cluster.init` wrote the password with `atomic_write` (its temporary file gets the umask's 0644) and chmodded
    it 600 only after the rename: any local user could read it meanwhile. Every write is checked at its rename."""
    import os
    import stat

    from synthmed import io as sio
    from synthmed import server as srv

    modes, replace = [], os.replace

    def spy(src, dst):
        modes.append((Path(dst).name, stat.S_IMODE(os.stat(src).st_mode)))
        return replace(src, dst)

    monkeypatch.setattr(sio.os, "replace", spy)
    monkeypatch.setattr(srv, "pg_tool", lambda name: name)
    cluster = srv.Cluster(str(tmp_path / "postgres" / "data"), 5432, str(tmp_path / "postgres.password"))
    monkeypatch.setattr(cluster, "run", lambda *cmd, **kw: None)  # no initdb here: the password file is the subject
    old = os.umask(0o022)
    try:
        cluster.init()
    finally:
        os.umask(old)
    assert modes == [("postgres.password", 0o600)]
    assert stat.S_IMODE((tmp_path / "postgres.password").stat().st_mode) == 0o600 and len(cluster.password()) >= 24
