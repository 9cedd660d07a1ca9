"""Every MLflow tag key synthmed writes or reads, spelled once (as synthmed/metrics/names.py does for metric keys).

Tags say what a run *is* (its config hash, family, data) and how runs relate (sweep parent, evaluation child,
reproduction, first stage); metrics say what it scored.
"""

from __future__ import annotations

PREFIX = "synthmed."

# ---- identity of a training run (DESIGN.md, "MLflow layout") ------------------------------------------------------
CONFIG_HASH = "synthmed.config_hash"
MODEL_FAMILY = "synthmed.model_family"
MODEL = "synthmed.model"
DATASET_FINGERPRINT = "synthmed.dataset_fingerprint"
GIT_SHA = "synthmed.git_sha"
VERSION = "synthmed.version"
CHECKPOINT_DIR = "synthmed.checkpoint_dir"  # where the run's checkpoints are, for resume=
ERROR = "synthmed.error"  # on a FAILED or KILLED run: one line saying why (`Type: message`), e.g. in sweep summaries

# ---- MLflow's own keys --------------------------------------------------------------------------------------------
PARENT_RUN = "mlflow.parentRunId"  # a sweep job's parent run; an evaluation's trained run

# ---- sweeps -------------------------------------------------------------------------------------------------------
SWEEP = "synthmed.sweep"  # "parent" on the parent run of a multirun
SWEEP_OVERRIDES = "synthmed.sweep_overrides"  # the multirun's command-line overrides
SWEEP_CHILDREN = "synthmed.sweep_children"  # how many jobs the sweep ran

SWEEP_BEST_RUN = "synthmed.sweep.best_run"  # on a sweep parent: its best child by the sweep's metric
SWEEP_BEST_METRIC = "synthmed.sweep.best_metric"
SWEEP_BEST_VALUE = "synthmed.sweep.best_value"
SEARCH_OBJECTIVE = "synthmed.search.objective"  # on a search trial: the key it returned to Optuna
SEARCH_OBJECTIVE_NOTE = "synthmed.search.objective_note"  # why it is not `optimized_metric` (offline fallback)

# ---- runs about other runs ----------------------------------------------------------------------------------------
EVALUATES = "synthmed.evaluates"  # on an evaluation child run (`synthmed evaluate child_run=true`): the trained run
EVAL_GUIDANCE = "synthmed.eval.guidance_scale"  # the guidance weight an evaluation sampled with, when overridden
REPORT = "synthmed.report"  # kind of a report run: compare | utility | bias | reader_study
REPORT_UTILITY = "utility"  # the REPORT value of a `synthmed utility` child run
UTILITY_RUNS = "synthmed.utility.runs"  # on a utility report: the generator run id(s) it sampled, by class
COMPARE_N_RUNS = "synthmed.compare.n_runs"
COMPARE_RUNS = "synthmed.compare.runs"
REPRODUCES = "synthmed.reproduces"  # on a reproduction: the run id (or study entry) it reproduces
REPRODUCE_VERDICT = "synthmed.reproduce.verdict"

# ---- the first stage of a latent model (ldm) ----------------------------------------------------------------------
AUTOENCODER_RUN = "synthmed.autoencoder_run"  # the vae's MLflow run id, when it has one
AUTOENCODER_HASH = "synthmed.autoencoder_hash"  # the vae's config hash
AUTOENCODER_DIGEST = "synthmed.autoencoder_digest"  # sha256 of the vae weights the ldm was trained on
AUTOENCODER_CHECKPOINT = "synthmed.autoencoder_checkpoint"  # the checkpoint file it was read from


def provenance(key: str) -> str:
    """The tag of a metric suite's provenance entry, e.g. `fid.weights_sha256` -> `synthmed.fid.weights_sha256`."""
    return PREFIX + key

# ---- liveness of a run (tracking/heartbeat.py, `synthmed runs list|reap`) ----------------------------------------
HEARTBEAT = "synthmed.heartbeat"  # UTC time of the last beat, ISO 8601 ("2026-12-01T07:00:00Z")
HEARTBEAT_EVERY = "synthmed.heartbeat_s"  # the beat interval the run promised, seconds
HOST = "synthmed.host"  # host name and process id of rank 0: where to look for the process
PID = "synthmed.pid"
REAPED = "synthmed.reaped"  # set by `synthmed runs reap`: when, and the heartbeat age that decided it

# ---- exports (`synthmed sample`) ----------------------------------------------------------------------------------
EXPORT_GATE = "synthmed.export.gate"  # privacy gate mode of the run's latest export: refuse | filter | warn | off
EXPORT_AT = "synthmed.export.at"  # UTC time stamp of that export (its report: exports/<stamp>-privacy_report.json)
MODEL_CARD = "synthmed.model_card"  # artifact path of the run's model card (`synthmed card`)
