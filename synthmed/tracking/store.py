"""A local sqlite MLflow store that many jobs may open at the same moment.

MLflow creates and migrates a fresh sqlite file on first use, and Lightning's MLFlowLogger creates a missing
experiment with get-then-create: when a job array starts on a store that does not exist yet, several processes run
the migrations or create the experiment at once and all but one fail ("table ... already exists", "database is
locked", "Experiment ... already exists"). `prepare` does both once, under an exclusive lock on a file beside the
database (`mlflow.db.lock`), so the jobs after the first find a migrated store with its experiment. Servers
(`http://...`, PostgreSQL) handle concurrency themselves and are left alone.

`check` runs before any work: a sqlite store on a network file system is refused (sqlite's locks are not reliable
over NFS, Lustre, GPFS or CIFS; a team runs `synthmed server`), and a tracking server that does not answer is named
at once instead of after MLflow's retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7 with backoff, minutes).
"""

from __future__ import annotations

import fcntl
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

SQLITE = "sqlite:///"
MOUNTS = "/proc/mounts"
# File systems shared between machines, whose locking sqlite cannot rely on (Linux /proc/mounts type names).
NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "glusterfs",
              "fuse.glusterfs", "fuse.sshfs"}
PROBE_TIMEOUT_S = 10.0  # seconds to wait for a tracking server's /health before calling it down


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def prepare(uri: str, experiment: str | None = None, artifact_location: str | None = None) -> None:
    """Migrates a local sqlite store and creates `experiment` in it, one process at a time."""
    db = sqlite_path(uri)
    if db is None:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        client = MlflowClient(uri)  # a fresh file is created and migrated here
        if experiment and client.get_experiment_by_name(experiment) is None:
            try:
                client.create_experiment(experiment, artifact_location=artifact_location)
            except MlflowException:  # created meanwhile by a process that does not take the lock
                if client.get_experiment_by_name(experiment) is None:
                    raise


def mount_of(path: Path, mounts: str) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding `path`, from the text of /proc/mounts."""
    best = ("/", "")
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = path == Path(point) or Path(point) in path.parents
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best


def _unescape(field: str) -> str:
    """A /proc/mounts field with its octal escapes (space \\040, tab, newline, backslash) decoded. Only those: other
    characters are written as they are (UTF-8), and a `unicode_escape` decode turned "/mnt/données" into
    "/mnt/donnÃ©es", so a store under such a mount was never found on its network file system."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def network_fs(path: Path, mounts: str | None = None) -> str | None:
    """'<type> (<mount point>)' of the network file system holding `path`, else None."""
    if mounts is None:
        try:
            mounts = Path(MOUNTS).read_text()
        except OSError:  # not Linux: nothing to tell
            return None
    path, missing = Path(os.path.abspath(path)), []
    while not path.exists() and path != path.parent:  # a store not created yet: its folder's mount decides
        path, missing = path.parent, [path.name, *missing]
    point, fstype = mount_of(path.resolve().joinpath(*missing), mounts)  # symlinks resolved to where data lands
    return f"{fstype} ({point})" if fstype.lower() in NETWORK_FS else None


def refuse_network_sqlite(uri: str, allow: bool = False, mounts: str | None = None) -> None:
    """A sqlite store on a shared mount loses or corrupts runs when jobs on several machines write to it."""
    db = sqlite_path(uri)
    shared = network_fs(db, mounts) if db is not None and not allow else None
    if shared:
        raise ValueError(
            f"the MLflow store {db} is on a network file system, {shared}: sqlite's file locks are not reliable "
            f"there, and jobs on several machines would corrupt it. Run a tracking server (`synthmed server`, or "
            f"`make server`) and log to it with logger.tracking_uri=http://127.0.0.1:PORT (or MLFLOW_TRACKING_URI); "
            f"or, if only one process on one machine will ever write it, set logger.allow_network_sqlite=true")


def check_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """An http(s) tracking URI must answer MLflow's /health now: a run that cannot be recorded never starts."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:  # it answered (e.g. 401 behind basic auth): it is up
        return
    except OSError as err:
        reason = getattr(err, "reason", err)
        raise ConnectionError(
            f"the MLflow tracking server {uri} does not answer ({reason}); nothing was trained. Start it "
            f"(`synthmed server --port PORT` or `make server`; a colleague's server: open the SSH tunnel it printed), "
            f"or log elsewhere with logger.tracking_uri= / MLFLOW_TRACKING_URI") from None


def check(uri: str, allow_network_sqlite: bool = False) -> None:
    """Before any work: the store is usable from here (see the module docstring)."""
    refuse_network_sqlite(uri, allow_network_sqlite)
    check_server(uri)
