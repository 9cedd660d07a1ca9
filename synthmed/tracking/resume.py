"""`resume=<run id | config hash | last>`: continue a killed or failed run in the same MLflow run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.checkpoints import refuse_url, usable_checkpoint
from synthmed.tracking.confighash import short_hash

# The newest of these is resumed from: on_exception.ckpt is written at the step a signal or crash stopped training,
# last.ckpt at the last evaluation, final.ckpt as soon as training ended (a run stopped in its final evaluation).
CANDIDATES = ("on_exception.ckpt", "last.ckpt", "final.ckpt")


@dataclass(frozen=True)
class Resume:
    run_id: str
    checkpoint: Path


def newest_checkpoint(folder: Path) -> Path | None:
    found = [folder / name for name in CANDIDATES if (folder / name).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def refuse_finished(run, ref: str) -> None:
    """A finished run is a record and never changes: resuming it would re-evaluate into it and rewrite final.json."""
    if run.info.status != "FINISHED":
        return
    name = run.info.run_name or run.info.run_id
    raise ValueError(
        f"resume={ref}: run {run.info.run_id} ({name}) is FINISHED, and a finished record never changes. To train "
        f"longer, start a new run (a new config hash and its own record) with the same overrides and a larger "
        f"trainer.max_steps, without resume=; to score it again, use `synthmed evaluate run={run.info.run_id} "
        f"child_run=true` (a child run). resume= continues only KILLED or FAILED runs.")


def find_resume(client: MlflowClient, ref: str, full_hash: str, fallback: str = "none") -> Resume:
    """The run to continue and its newest readable checkpoint (`fallback="previous"`: the newest readable one when
    the newest is damaged); refuses a URL and a run recorded with another config hash."""
    refuse_url(ref, "resume")
    run = mt.find_run(client, full_hash if ref == "last" else ref, prefer_finished=False)
    recorded = run.data.tags.get(tk.CONFIG_HASH, "")
    if recorded != full_hash:
        raise ValueError(
            f"resume={ref}: run {run.info.run_id} was recorded with config hash {short_hash(recorded)}, but this "
            f"config hashes to {short_hash(full_hash)}; resuming would mix two configurations. Resume with the "
            f"run's recorded config (its config/config.yaml artifact) or start a new run without resume=.")
    refuse_finished(run, ref)  # after the hash check: another config is the first thing to say
    folder = Path(run.data.tags.get(tk.CHECKPOINT_DIR, ""))
    checkpoint = newest_checkpoint(folder) if folder.name else None
    if checkpoint is None:
        raise FileNotFoundError(f"resume={ref}: run {run.info.run_id} left no checkpoint "
                                f"({' or '.join(CANDIDATES)}) in '{folder}'")
    return Resume(run.info.run_id, usable_checkpoint(checkpoint, fallback))
