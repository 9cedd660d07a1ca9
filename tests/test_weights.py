"""`synthmed weights fetch`, offline: a local HTTP server on 127.0.0.1 stands in for GitHub (the URL is patched)."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from synthmed import cli
from synthmed import weights as W

PAYLOAD = bytes(range(256)) * 64  # 16 KiB: small, and not all one byte
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """`/good-<sha8>.pth`: the payload; `/bad-00000000.pth`: the payload under a name whose prefix is wrong;
    `/cut-<sha8>.pth`: announces the full length, sends half and closes (an interrupted download)."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        body = PAYLOAD[: len(PAYLOAD) // 2] if self.path.startswith("/cut-") else PAYLOAD
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)  # port 0: any free port
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_url_is_pytorch_fids_own():
    from pytorch_fid.inception import FID_WEIGHTS_URL

    from synthmed.metrics.inception import WEIGHTS_FILE

    assert W.URL == FID_WEIGHTS_URL
    assert W.expected_prefix(WEIGHTS_FILE) == "6726825d"


def test_fetch_into_torch_hub_cache_through_the_cli(server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(W, "URL", f"{server}/good-{SHA[:8]}.pth")
    assert cli.main(["weights", "fetch"]) == 0
    path = tmp_path / "th" / "hub" / "checkpoints" / f"good-{SHA[:8]}.pth"
    assert path.read_bytes() == PAYLOAD
    assert str(path) in capsys.readouterr().out  # says where it put the file
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    mtime = path.stat().st_mtime_ns
    assert cli.main(["weights", "fetch"]) == 0 and path.stat().st_mtime_ns == mtime  # present + valid: no download


def test_fetch_to_folder(server, monkeypatch, tmp_path):
    monkeypatch.setattr(W, "URL", f"{server}/good-{SHA[:8]}.pth")
    assert cli.main(["weights", "fetch", "--to", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w" / f"good-{SHA[:8]}.pth").read_bytes() == PAYLOAD


@pytest.mark.parametrize("name", ["bad-00000000.pth", f"cut-{SHA[:8]}.pth"])
def test_wrong_checksum_or_partial_download_leaves_nothing(server, monkeypatch, tmp_path, capsys, name):
    monkeypatch.setattr(W, "URL", f"{server}/{name}")
    assert cli.main(["weights", "fetch", "--to", str(tmp_path)]) == 1
    assert "invalid hash" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a .partial


def test_existing_file_with_wrong_checksum_is_refused(server, monkeypatch, tmp_path):
    (tmp_path / f"good-{SHA[:8]}.pth").write_bytes(b"not the weights")
    with pytest.raises(RuntimeError, match="--force"):
        W.fetch(f"{server}/good-{SHA[:8]}.pth", tmp_path, progress=False)
    assert W.fetch(f"{server}/good-{SHA[:8]}.pth", tmp_path, force=True, progress=False).read_bytes() == PAYLOAD


def test_name_without_prefix_is_refused():
    with pytest.raises(ValueError, match="sha256 prefix"):
        W.expected_prefix("weights.pth")


def test_missing_weights_error_names_the_command(tmp_path):
    from synthmed.metrics.inception import resolve_weights

    with pytest.raises(FileNotFoundError, match="synthmed weights fetch"):
        resolve_weights(tmp_path / "absent.pth")
