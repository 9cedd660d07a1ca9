"""What `synthmed compare` and `synthmed reproduce` read back from a run: config, final metrics, sample grids.

A run's *final metrics* are `metrics/final.json` (the final evaluation that `train()` returns). Runs without it
(failed, killed) fall back to the last logged `val/` generation metrics. `synthmed reproduce` also compares the last
value of every `train/` metric: the loss at the final step is the most sensitive check of an identical training.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from synthmed.metrics import names

GRID_RE = re.compile(r"samples/step_(\d+)\.png$")
KEY_ORDER = list(dict.fromkeys(names.all_names().values()))  # names.py order: FID before KID before ...


def key_rank(key: str) -> tuple[int, str]:
    """Sort key that puts metric keys in names.py order, unknown keys last (alphabetically)."""
    return (KEY_ORDER.index(key), key) if key in KEY_ORDER else (len(KEY_ORDER), key)


def artifact_text(client: MlflowClient, run_id: str, artifact: str) -> str | None:
    """The text of one artifact, or None when the run has no such artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(client.download_artifacts(run_id, artifact, tmp)).read_text()
        except Exception:  # MlflowException / OSError: the artifact does not exist
            return None


def recorded_config(client: MlflowClient, run_id: str) -> DictConfig | None:
    """The resolved config the run recorded as `config/config.yaml`."""
    text = artifact_text(client, run_id, "config/config.yaml")
    return OmegaConf.create(text) if text is not None else None


def final_metrics(client: MlflowClient, run: Run, with_train: bool = False) -> dict[str, float]:
    """`metrics/final.json` values (+ the last value of each `train/` metric when `with_train`), names.py order."""
    logged = run.data.metrics
    out = {k: float(v) for k, v in logged.items() if with_train and k.startswith("train/")}
    text = artifact_text(client, run.info.run_id, "metrics/final.json")
    if text is not None:
        out.update({k: float(v) for k, v in json.loads(text).get("metrics", {}).items()})
    else:
        out.update({k: float(v) for k, v in logged.items() if k.startswith("val/") and k != names.VAL_LOSS})
    return dict(sorted(out.items(), key=lambda kv: key_rank(kv[0])))


def final_grid(client: MlflowClient, run_id: str, dest: Path) -> tuple[Path, int] | None:
    """Download the sample grid with the highest step to `dest`; returns (path, step) or None without grids."""
    steps = {}
    for item in client.list_artifacts(run_id, "samples"):
        match = GRID_RE.search(item.path)
        if match:
            steps[int(match.group(1))] = item.path
    if not steps:
        return None
    step = max(steps)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        dest.write_bytes(Path(client.download_artifacts(run_id, steps[step], tmp)).read_bytes())
    return dest, step
