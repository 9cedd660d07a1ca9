"""`synthmed server`: a PostgreSQL-backed MLflow tracking server for a team, bound to 127.0.0.1.

    synthmed server [--root DIR] [--port 5000] [--db-url postgresql://...] [--artifacts DIR | s3://bucket/path]
    synthmed server stop [--root DIR]

Without `--db-url` a local PostgreSQL cluster is made with `initdb` under `<root>/postgres` (once; later starts reuse
it) and started on `--pg-port`; it holds two databases: `mlflow` (the tracking store) and `optuna` (studies of
searches run from several machines). `mlflow server` runs with proxied artifacts (`--artifacts-destination`), so
clients upload and download through HTTP and need no shared file system. Ctrl-C, SIGTERM or `synthmed server stop`
stop MLflow, then PostgreSQL; pid and state files live in `<root>/server/`.

PostgreSQL refuses to run as root: when started by root, the cluster belongs to a system user (`synthmed-pg`,
created once with `useradd --system`). Its password is random, kept in `<root>/postgres.password` (mode 600) and
handed to MLflow as `PGPASSWORD`, never on a command line. A password in `--db-url` is moved to `PGPASSWORD` the
same way; that database must accept a connection before MLflow starts (no `initdb`, and `stop` leaves it running).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from synthmed.io import atomic_path, atomic_write

PG_USER = "synthmed"  # the database role MLflow and Optuna connect as
OS_USER = "synthmed-pg"  # the system user that owns the cluster when synthmed runs as root
DATABASES = ("mlflow", "optuna")
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # Debian's layout, newest first


def pg_tool(name: str) -> str:
    """The path of a PostgreSQL program (`initdb`, `pg_ctl`), from PATH or Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which(name) or next((str(d / name) for d in PG_BIN_DIRS if (d / name).is_file()), None)
    if found is None:
        raise FileNotFoundError(f"PostgreSQL's `{name}` is not installed (looked on PATH and in "
                                f"/usr/lib/postgresql/*/bin): `apt-get install postgresql` (or `make test-setup`), "
                                f"or give an existing database with --db-url postgresql://...")
    return found


def write_secret(path: Path, text: str) -> None:
    """Write `text` atomically to `path`, readable by its owner only from the first byte: `atomic_write` creates
    its temporary file with the umask's mode (0644), so the password was world-readable until a later chmod."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sqlalchemy_url(url: str) -> str:
    """`postgresql://` names SQLAlchemy's default driver, psycopg2, which synthmed does not install; psycopg (3) is
    the driver of the `server` extra, so a bare scheme is given it explicitly."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def given_database(url: str) -> tuple[str, str | None]:
    """`--db-url` as (MLflow's store URL without a password, the password or None).

    A password written in the URL would show on `mlflow server`'s command line (`ps`, /proc) for every user of the
    machine; it travels as PGPASSWORD instead (libpq reads it; without one, PGPASSWORD or ~/.pgpass as usual).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    expected = "expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
    try:
        parsed = make_url(sqlalchemy_url(url))
    except ArgumentError:
        raise ValueError(f"--db-url {url!r} is not a database URL: {expected}") from None
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        raise ValueError(f"--db-url {parsed.render_as_string()!r}: {expected} (synthmed server runs on PostgreSQL)")
    return parsed._replace(password=None).render_as_string(hide_password=False), parsed.password


def check_database(store: str, password: str | None, timeout_s: int = 10) -> None:
    """A given database must accept a connection now: named here, before `mlflow server` dies on it in its log."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(store)
    try:
        psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database, password=password,
                        connect_timeout=timeout_s, **url.query).close()
    except psycopg.Error as err:
        raise ConnectionError(f"--db-url {store}: PostgreSQL refuses the connection ({str(err).strip()}); "
                              f"check host, port, database and the password (in the URL, PGPASSWORD or ~/.pgpass)"
                              ) from None


def check_basic_auth() -> None:
    """MLflow's basic-auth app has dependencies of its own (mlflow[auth]): missing, it is named before anything
    starts, instead of in mlflow.log after PostgreSQL came up."""
    try:
        import mlflow.server.auth  # noqa: F401
    except ImportError as err:
        raise RuntimeError(f"--basic-auth needs MLflow's auth app, which does not import here ({err}); install "
                           f"`mlflow[auth]` on the server machine (clients need nothing extra)") from None


@dataclass
class Cluster:
    """A local PostgreSQL cluster: data folder, port, socket folder, and who runs it."""

    data: str
    port: int
    password_file: str
    os_user: str | None = None  # None: the current (non-root) user

    def url(self, database: str) -> str:
        """SQLAlchemy URL without the password (libpq reads it from PGPASSWORD)."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def password(self) -> str:
        return Path(self.password_file).read_text().strip()

    def run(self, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        """Run a PostgreSQL tool as the cluster's owner; raises with its output on failure."""
        full = ["runuser", "-u", self.os_user, "--", *cmd] if self.os_user else list(cmd)
        proc = subprocess.run(full, capture_output=True, text=True, cwd=self.data if Path(self.data).is_dir() else "/",
                              **kwargs)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def init(self) -> None:
        """`initdb` once (password auth for every connection, role `synthmed`), then the databases."""
        data = Path(self.data)
        if (data / "PG_VERSION").is_file():
            return
        data.parent.mkdir(parents=True, exist_ok=True)
        data.parent.chmod(0o700)
        pwfile = Path(self.password_file)
        if not pwfile.is_file():
            write_secret(pwfile, secrets.token_urlsafe(24) + "\n")
        pwfile.chmod(0o600)
        if self.os_user:
            shutil.chown(data.parent, self.os_user)
            tmp = data.parent / ".pwfile"  # initdb reads the password as the cluster's owner, who cannot read pwfile
            write_secret(tmp, self.password())
            shutil.chown(tmp, self.os_user)
            source = str(tmp)
        else:
            source = str(pwfile)
        try:
            self.run(pg_tool("initdb"), "-D", self.data, "-U", PG_USER, f"--pwfile={source}",
                     "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions")
        finally:
            if self.os_user:
                (data.parent / ".pwfile").unlink(missing_ok=True)

    def start(self) -> None:
        """Start on 127.0.0.1:port (socket in the data folder, not /var/run), create missing databases and make the
        `optuna` one ready for studies."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
        self.run(pg_tool("pg_ctl"), "-D", self.data, "-o", options, "-l", f"{self.data}/server.log", "-w", "-t", "60",
                 "start")
        self.create_databases()
        prepare_optuna(self.url("optuna"), self.password())

    def stop(self) -> None:
        if (Path(self.data) / "postmaster.pid").is_file():
            self.run(pg_tool("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")

    def create_databases(self) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, password=self.password(),
                             dbname="postgres", autocommit=True) as conn:
            have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for name in DATABASES:
                if name not in have:
                    conn.execute(f'CREATE DATABASE "{name}"')


def prepare_optuna(url: str, password: str | None = None) -> None:
    """Create Optuna's tables in `url` and stamp their schema version, in one committed transaction.

    Optuna 2.10 (what hydra-optuna-sweeper 1.x supports) stamps its schema version without committing under
    SQLAlchemy 2, so a study in a fresh database fails its version check; once prepared here, every process (several
    machines, SLURM jobs) opens the study normally.
    """
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from optuna.storages._rdb import models
    from sqlalchemy import create_engine

    engine = create_engine(url, connect_args={"password": password} if password else {})
    try:
        with engine.begin() as conn:
            models.BaseModel.metadata.create_all(conn)
            context = MigrationContext.configure(conn)
            if context.get_current_revision() is None:
                script = ScriptDirectory(str(Path(models.__file__).parent / "alembic"))
                context.stamp(script, script.get_current_head())
    finally:
        engine.dispose()


def cluster_owner(data: Path) -> str | None:
    """None when not root; as root, the system user that owns the cluster (created once), who must be able to
    reach `data` (a folder under a private home is not)."""
    if os.geteuid() != 0:
        return None
    if subprocess.run(["id", "-u", OS_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
                       check=True, capture_output=True)
    parent = data.parent.parent
    parent.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["runuser", "-u", OS_USER, "--", "test", "-x", str(parent)]).returncode != 0:
        raise PermissionError(f"PostgreSQL cannot run as root, and its user '{OS_USER}' cannot enter {parent}: "
                              f"choose a --root that other users can traverse (e.g. under /srv or /tmp), or run "
                              f"`synthmed server` as a normal user")
    return OS_USER


@dataclass
class MlflowServer:
    """`mlflow server` on 127.0.0.1:port over a PostgreSQL store with proxied artifacts."""

    store: str
    artifacts: str
    port: int
    log: str
    pid: int | None = None
    workers: int = 2

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str], timeout: float = 180.0, extra: tuple[str, ...] = ()) -> None:
        """Start in its own process group (so stopping it stops its workers) and wait until /health answers."""
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store, "--artifacts-destination",
               self.artifacts, "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers), *extra]
        with open(self.log, "ab") as out:
            # cwd: MLflow's basic-auth app keeps its user store `basic_auth.db` in the working directory.
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    cwd=Path(self.log).parent)
        self.pid = proc.pid
        deadline = time.monotonic() + timeout
        while not healthy(self.uri):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}; its log: {self.log}\n"
                                   f"{Path(self.log).read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"mlflow server did not answer on {self.uri} within {timeout:.0f} s; see {self.log}")
            time.sleep(0.5)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `timeout` seconds."""
        if self.pid is not None:
            stop_group(self.pid, timeout)
            self.pid = None


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_group(pid: int, timeout: float = 30.0) -> None:
    """Stop the process group led by `pid` (the server and its workers): SIGTERM, then SIGKILL."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child: reap it
                break
        except ChildProcessError:  # not our child (`server stop` after a crash): poll for it
            if not alive(pid):
                break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)


@dataclass
class State:
    """What `server stop` needs, in `<root>/server/state.json`."""

    pid: int  # the `synthmed server` process, which stops both servers on SIGTERM
    mlflow_pid: int
    uri: str
    pg_data: str | None
    pg_os_user: str | None


def state_file(root: Path) -> Path:
    return root / "server" / "state.json"


def banner(uri: str, port: int, cluster: Cluster | None, artifacts: str) -> str:
    """What a user (and a colleague) needs to use the server."""
    host = socket.gethostname()
    lines = [f"MLflow tracking server: {uri}   (artifacts: {artifacts})",
             f"  use it:      export MLFLOW_TRACKING_URI={uri}   # or logger.tracking_uri={uri}",
             f"  UI:          {uri} in a browser on this machine",
             f"  a colleague: ssh -N -L {port}:127.0.0.1:{port} {os.environ.get('USER', 'you')}@{host}   "
             f"then open http://127.0.0.1:{port}"]
    if cluster is not None:
        lines.append(f"  Optuna:      PGPASSWORD=$(cat {cluster.password_file}) synthmed train -m hparams_search=... "
                     f"hydra.sweeper.storage={cluster.url('optuna')} hydra.sweeper.study_name=<name>")
    lines.append("stop: Ctrl-C here, or `synthmed server stop` (make server-stop)")
    return "\n".join(lines)


def start(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    (root / "server").mkdir(parents=True, exist_ok=True)
    if state_file(root).is_file():
        raise RuntimeError(f"{state_file(root)} exists: a server of this root may be running; "
                           f"`synthmed server stop --root {root}` first")
    env = dict(os.environ)
    extra = ("--app-name", "basic-auth") if args.basic_auth else ()
    if args.basic_auth:
        check_basic_auth()
        if not (root / "server" / "basic_auth.db").is_file() and "MLFLOW_AUTH_ADMIN_PASSWORD" not in env:
            raise RuntimeError("--basic-auth: the first start creates the user `admin` with the password in "
                               "MLFLOW_AUTH_ADMIN_PASSWORD; set it (a strong one, not in your shell history)")
    cluster = None
    if args.db_url:
        store, password = given_database(args.db_url)
        if password is not None:
            env["PGPASSWORD"] = password
        check_database(store, env.get("PGPASSWORD"))
    else:
        data = root / "postgres" / "data"
        cluster = Cluster(str(data), pg_port(root, args.pg_port), str(root / "postgres.password"), cluster_owner(data))
        cluster.init()
        store = cluster.url("mlflow")
    artifacts = args.artifacts or str(root / "mlartifacts")
    server = MlflowServer(store, artifacts, args.port, str(root / "server" / "mlflow.log"), workers=args.workers)
    signal.signal(signal.SIGTERM, _interrupt)  # `server stop` (SIGTERM) cleans up as Ctrl-C does, also while starting
    try:
        if cluster is not None:
            cluster.start()
            env["PGPASSWORD"] = cluster.password()  # libpq reads it: never on MLflow's command line
        server.start(env, extra=extra)
        atomic_write(state_file(root), json.dumps(asdict(State(os.getpid(), server.pid, server.uri, cluster and cluster.data,
                                                                 cluster and cluster.os_user))))
        print(banner(server.uri, args.port, cluster, artifacts), flush=True)
        wait_for_signal()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C or `server stop` must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        server.stop()
        if cluster is not None:
            cluster.stop()
        state_file(root).unlink(missing_ok=True)
        print("server stopped", flush=True)
    return 0


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def wait_for_signal() -> None:
    """Block until Ctrl-C or SIGTERM (`synthmed server stop`)."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def pg_port(root: Path, asked: int | None) -> int:
    """`asked`, else the port of the last start (so Optuna storage URLs in job scripts stay valid), else a free one."""
    remembered = root / "server" / "pg_port"
    port = asked or (int(remembered.read_text()) if remembered.is_file() else 0)
    if not asked and port:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:  # taken meanwhile by something else
                port = 0
    port = port or free_port()
    atomic_write(remembered, f"{port}\n")
    return port


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(args: argparse.Namespace) -> int:
    """Stop the server of `--root` from its state file (its own start process, if alive, also cleans up)."""
    root = Path(args.root).resolve()
    path = state_file(root)
    if not path.is_file():
        print(f"no server state in {path}: nothing to stop", file=sys.stderr)
        return 1
    state = State(**json.loads(path.read_text()))
    if alive(state.pid):  # the foreground process shuts both down in order and removes the state file
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + 90
        while path.is_file() and time.monotonic() < deadline:
            time.sleep(0.3)
    if path.is_file():  # that process is gone (killed): stop what it left
        stop_group(state.mlflow_pid)
        if state.pg_data:
            Cluster(state.pg_data, 0, "", state.pg_os_user).stop()
        path.unlink(missing_ok=True)
    print(f"stopped {state.uri}" + (f" and PostgreSQL in {state.pg_data}" if state.pg_data else ""))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthmed server", description=__doc__.split("\n")[0])
    p.add_argument("action", nargs="?", choices=("start", "stop"), default="start")
    p.add_argument("--root", default=os.environ.get("SYNTHMED_ROOT", "."), help="paths.root (default: current dir)")
    p.add_argument("--port", type=int, default=5000, help="MLflow server port on 127.0.0.1 (default 5000)")
    p.add_argument("--pg-port", type=int, default=None, help="local PostgreSQL port (default: the last start's, else a free one)")
    p.add_argument("--db-url", default=None, help="an existing postgresql:// database instead of a local cluster")
    p.add_argument("--artifacts", default=None, help="artifact destination: a folder (default ROOT/mlartifacts) or "
                                                      "s3://bucket/path (MinIO: set MLFLOW_S3_ENDPOINT_URL)")
    p.add_argument("--workers", type=int, default=2, help="MLflow server worker processes (default 2)")
    p.add_argument("--basic-auth", action="store_true", help="MLflow's basic-auth app (change the admin password!)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return start(args) if args.action == "start" else stop(args)
    except (FileNotFoundError, PermissionError, RuntimeError, TimeoutError, ValueError, ConnectionError) as exc:
        print(f"synthmed server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # stopped while starting: what had started is stopped again (start's finally)
        return 130


if __name__ == "__main__":
    sys.exit(main())
