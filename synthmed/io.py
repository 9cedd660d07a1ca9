"""Atomic file writes: the one helper every module uses, so a killed run never leaves a half-written file.

A file is written under a unique temporary name in its target folder, then `os.replace`d into place (atomic on one
file system); concurrent writers (DDP ranks, sweep jobs) each rename a complete file and the last one wins.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path next to `path`; on success it replaces `path`, on failure it is removed.

    Args:
        path: final file name.
        suffix: kept at the end of the temporary name (nibabel picks compression from '.nii.gz', numpy appends
            '.npz' to names without it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks: the one file hasher of the package (data
    fingerprints, weights checks, reader-study keys); `synthmed.data.splits.file_sha256` adds a per-process cache."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)
