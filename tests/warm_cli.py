"""A warm `synthmed` for tests whose subject is the command line as a user types it (the README's commands).

Every `synthmed ...` a test script runs would start a Python that imports torch, Lightning, MONAI and MLflow (~9 s
on 2 cores) before doing a second of work; the README alone runs ~36 of them. Here one server process imports all
of that once, then forks a fresh child per command. The child gets the caller's stdin/stdout/stderr (passed over a
Unix socket), working directory, environment and arguments, reseeds its random generators, and runs
`synthmed.cli:main` exactly as the console script does; the caller gets its exit status. Signals the caller receives
(SIGINT, SIGTERM) are forwarded to the child. What is not the same as a cold start: modules are imported before the
command's environment is applied, so nothing may read the environment at import time (synthmed does not; the
console script itself is checked cold by tests/test_readme.py).

The client side (`client`) uses the standard library only: the shim `synthmed` it is called from starts in ~30 ms.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import traceback

_HEADER = struct.Struct("!I")  # request length; the three standard streams ride along as SCM_RIGHTS
_STATUS = struct.Struct("!i")  # client -> server: a signal number; server -> client: the exit status (negative: signal)
PRELOAD = ("synthmed.cli", "synthmed.train", "synthmed.sample", "synthmed.evaluate", "synthmed.compare",
           "synthmed.reproduce", "synthmed.utility", "synthmed.bias", "synthmed.card", "synthmed.translate",
           "synthmed.runs", "synthmed.reader_study.command")


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def client(sock_path: str, argv: list[str]) -> int:
    """Run `synthmed argv` in the warm server; returns what a cold process would exit with."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(sock_path)
    except OSError as exc:
        print(f"warm synthmed: no server at {sock_path} ({exc})", file=sys.stderr)
        return 70
    request = json.dumps({"argv0": sys.argv[0], "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
    conn.sendall(request)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: conn.sendall(_STATUS.pack(signum)))
    try:
        (status,) = _STATUS.unpack(_recv_exactly(conn, _STATUS.size))
    except EOFError:
        print("warm synthmed: the server went away", file=sys.stderr)
        return 70
    if status < 0:  # the child died of a signal: so does this process, as a shell expects
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def write_shim(path: str, sock_path: str) -> str:
    """An executable `synthmed` at `path` that forwards to the server at `sock_path`."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(path, "w") as f:
        f.write(f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {repo!r})\n"
                f"from tests.warm_cli import client\nsys.exit(client({sock_path!r}, sys.argv[1:]))\n")
    os.chmod(path, 0o755)
    return path


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the caller's process and run the command. Never returns."""
    for fd, target in zip(fds, (0, 1, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # a fork copies the server's generator states: every command would otherwise draw the same "random" numbers
    import random

    import numpy as np
    import torch

    random.seed()
    np.random.seed()
    torch.seed()
    sys.argv = [request["argv0"], *request["argv"]]
    from synthmed.cli import main

    try:
        status = _exit_status(main(request["argv"]))
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        status = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - reported as the interpreter would, status 1
        traceback.print_exc()
        status = 1
    _finish(status)


def _exit_status(code) -> int:
    """What the interpreter makes of `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _finish(status: int) -> None:
    """The observable part of interpreter shutdown: non-daemon threads joined, atexit handlers (MLflow ends its runs
    there), streams flushed. The rest (freeing the shared, frozen heap) is skipped: it costs seconds per command and
    makes native extensions report "leaks" of what the server still holds."""
    threading._shutdown()  # noqa: SLF001 - what Py_FinalizeEx calls first
    atexit._run_exitfuncs()  # noqa: SLF001
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if status < 0:  # died of a signal, as a cold process stopped by an unhandled SIGINT does
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status & 0xFF)


def serve(sock_path: str) -> None:
    """Import everything once, then fork one child per request until terminated."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra's plugin scan (launchers, sweepers) is done once here too
    # Out of the collector's sight: a child's collections (its exit runs a full one) would otherwise walk, and so
    # copy page by page, the whole pre-imported heap it shares with this process.
    gc.collect()
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(16)
    print("ready", flush=True)
    running: dict[int, socket.socket] = {}  # child pid -> the caller's connection
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # nothing to tidy; see _finish
    while True:
        readable, _, _ = select.select([listener, *running.values()], [], [], 0.05)
        for conn in readable:
            if conn is listener:
                _accept(listener, running)
            else:
                _forward(conn, running)
        _reap(running)


def _accept(listener: socket.socket, running: dict[int, socket.socket]) -> None:
    conn, _ = listener.accept()
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    request = json.loads(_recv_exactly(conn, _HEADER.unpack(header)[0]))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        listener.close()
        for other in (conn, *running.values()):
            other.close()
        _run_child(request, fds)
    for fd in fds:
        os.close(fd)
    running[pid] = conn


def _forward(conn: socket.socket, running: dict[int, socket.socket]) -> None:
    """A signal the caller received, or the caller gone (then its command is stopped as a closed terminal would)."""
    pid = next(p for p, c in running.items() if c is conn)
    data = conn.recv(_STATUS.size)
    signum = _STATUS.unpack(data)[0] if len(data) == _STATUS.size else signal.SIGTERM
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    if not data:
        running.pop(pid).close()


def _reap(running: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(_STATUS.pack(os.waitstatus_to_exitcode(status)))
            except OSError:
                pass
            conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
