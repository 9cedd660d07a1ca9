"""Reference-statistics cache: real-set features computed once per key, reused across runs.

A key covers everything that changes the features (dataset fingerprint and split, extractor, weights sha256,
dims, resize rule, sample count, content digest), so a hit is always safe to reuse. Files are written to a
temporary name and moved into place with ``os.replace``, so concurrent runs (DDP ranks, sweep jobs) never read a
half-written file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from synthmed.io import atomic_path, atomic_write

log = logging.getLogger(__name__)


def tensor_digest(x: Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and bytes: guards the cache against a reused key on changed data."""
    digest = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}".encode())
    digest.update(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ReferenceCache:
    """Arrays stored as ``<root>/<sha256 of key fields>.npz`` next to a ``.json`` with the fields (for humans).

    Args:
        root: cache folder (config ``metrics.cache_dir``); created on first save.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()

    @staticmethod
    def key(fields: dict[str, str | int]) -> str:
        """Stable hex key of JSON-able fields, independent of their order."""
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None on a miss (a corrupt file counts as a miss)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                return {name: f[name] for name in f.files}
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable reference cache file %s: %s", path, err)
            return None

    def save(self, key: str, arrays: dict[str, np.ndarray], fields: dict[str, str | int]) -> Path:
        """Store ``arrays`` under ``key`` atomically; ``fields`` go to a JSON sidecar."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        with atomic_path(path, suffix=".npz") as tmp:  # ".npz": np.savez would append it to the temporary name
            np.savez(tmp, **arrays)
        atomic_write(path.with_suffix(".json"), json.dumps(fields, indent=1))
        return path
