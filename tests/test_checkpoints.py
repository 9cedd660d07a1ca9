"""Resume with a damaged last.ckpt (bytes cut off, a flipped byte): a clear error naming the file, or with
resume_fallback=previous the previous readable checkpoint; a checkpoint or run given as a URL is refused."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch
from mlflow.tracking import MlflowClient

from synthmed.tracking import tags as tk
from synthmed.tracking.checkpoints import CorruptCheckpointError, check_checkpoint
from synthmed.tracking.restore import restore_run
from synthmed.tracking.resume import find_resume

HASH = "ab" * 32


def _ckpt(path, step, mtime):
    torch.save({"state_dict": {"w": torch.full((64, 64), float(step))}, "global_step": step}, path)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def killed_run(run_root):
    """A FAILED run whose folder holds step_0000002.ckpt (older, good) and last.ckpt (newest)."""
    folder = run_root / "outputs" / "job" / "checkpoints"
    folder.mkdir(parents=True)
    _ckpt(folder / "step_0000002.ckpt", 2, 1_000_000)
    _ckpt(folder / "last.ckpt", 4, 2_000_000)
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    run = client.create_run(client.create_experiment("x"), tags={tk.CONFIG_HASH: HASH, tk.CHECKPOINT_DIR: str(folder)})
    client.set_terminated(run.info.run_id, "FAILED")
    return client, run.info.run_id, folder


def _cut(path, keep: float):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    os.utime(path, (2_000_000, 2_000_000))


def test_good_checkpoint_is_used(killed_run):
    client, run_id, folder = killed_run
    assert find_resume(client, run_id, HASH).checkpoint == folder / "last.ckpt"


def test_truncated_last_ckpt_is_named_and_torch_agrees(killed_run):
    client, run_id, folder = killed_run
    _cut(folder / "last.ckpt", 0.6)
    with pytest.raises((RuntimeError, OSError)):  # the reference: torch itself cannot read it back
        torch.load(folder / "last.ckpt", weights_only=True)
    with pytest.raises(CorruptCheckpointError, match=rf"{folder / 'last.ckpt'} is truncated.*resume_fallback"):
        find_resume(client, run_id, HASH)
    resume = find_resume(client, run_id, HASH, fallback="previous")
    assert resume.checkpoint == folder / "step_0000002.ckpt"
    assert torch.load(resume.checkpoint, weights_only=True)["global_step"] == 2


def test_flipped_byte_fails_crc(tmp_path):
    path = _ckpt(tmp_path / "a.ckpt", 1, 1_000_000)
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the tensor payload
    data = bytearray(path.read_bytes())
    data[info.header_offset + len(info.FileHeader()) + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="fails its CRC"):
        check_checkpoint(path)


def test_no_readable_fallback_says_so(killed_run):
    client, run_id, folder = killed_run
    _cut(folder / "last.ckpt", 0.5)
    (folder / "step_0000002.ckpt").write_bytes(b"")
    with pytest.raises(CorruptCheckpointError, match="no other readable checkpoint"):
        find_resume(client, run_id, HASH, fallback="previous")


@pytest.mark.parametrize("url", ["https://example.org/last.ckpt", "s3://bucket/last.ckpt", "file:///tmp/x.ckpt"])
def test_urls_are_refused(killed_run, tmp_path, url):
    client, run_id, _ = killed_run
    with pytest.raises(ValueError, match="a URL is refused"):
        find_resume(client, url, HASH)
    with pytest.raises(ValueError, match="checkpoint=.*a URL is refused"):
        restore_run(client, run_id, tmp_path, checkpoint=url)
