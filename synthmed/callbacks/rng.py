"""RNG state in checkpoints, so a resumed run draws the same noise as an uninterrupted one.

Lightning saves no RNG state. This callback's state goes into the checkpoint's `callbacks` entry as tensors and
plain values only, so checkpoints still load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch


def capture() -> dict:
    """torch (CPU and every CUDA device), numpy and python RNG states as tensors / plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of `capture`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class RNGState(pl.Callback):
    """Saves the RNG states with every checkpoint and restores them when training resumes from one."""

    def state_dict(self) -> dict:
        return capture()

    def load_state_dict(self, state_dict: dict) -> None:
        restore_rng_state(state_dict)
