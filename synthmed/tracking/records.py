"""Recorded results that `synthmed reproduce` re-runs: an MLflow run, or an entry of a pinned study's runs.json.

A pinned study (`experiments/<slug>/`) keeps its results next to its README in `runs.json`, so a paper's numbers
can be reproduced without the MLflow store they were produced in:

    {"<64-hex config hash>": {
        "config": "configs/<hash12>.yaml",        # resolved config: a path relative to runs.json, or a mapping
        "metrics": {"val/fid": 41.2, ...},        # the recorded final metrics (keys from metrics/names.py)
        "requirements": "env/<hash12>.txt",       # `name==version` lines: a path, a list of lines, or null
        "git_sha": "<sha>[-dirty]",               # optional: the checkout that produced it
        "run_id": "<mlflow run id>",              # optional: the original MLflow run
        "command": "synthmed train ..."}}         # optional, for people

`synthmed reproduce --pin experiments/<slug> <hash>` writes such an entry from an MLflow run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from synthmed.io import atomic_write
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.confighash import short_hash
from synthmed.tracking.runinfo import artifact_text, final_metrics, recorded_config

RUNS_FILE = "runs.json"


@dataclass
class RecordedResult:
    """One recorded result: where it came from, its resolved config, metrics and environment."""

    source: str  # "MLflow run <id>" or the runs.json path
    run_id: str | None  # the original MLflow run, when known
    config_hash: str  # the full hash as recorded
    cfg: DictConfig
    metrics: dict[str, float]
    requirements: str | None  # `name==version` lines
    git_sha: str | None


def from_mlflow(client: MlflowClient, ref: str) -> RecordedResult:
    """The run `ref` (id or hash prefix) as a RecordedResult; its metrics include the last `train/` values.

    A hash that finds a reproduction (the newest FINISHED run of that hash) leads to the run it reproduces.
    """
    run = mt.find_run(client, ref)
    original = run.data.tags.get(tk.REPRODUCES)
    if run.info.run_id != ref and original:
        try:
            run = client.get_run(original)
        except Exception:  # MlflowException: the original lives in another store (or in a pinned study)
            pass
    run_id = run.info.run_id
    cfg = recorded_config(client, run_id)
    if cfg is None:
        raise LookupError(f"MLflow run {run_id} has no config/config.yaml artifact: nothing to re-run")
    return RecordedResult(f"MLflow run {run_id}", run_id, run.data.tags.get(tk.CONFIG_HASH, ""), cfg,
                  final_metrics(client, run, with_train=True), artifact_text(client, run_id, "env/requirements.txt"),
                  run.data.tags.get(tk.GIT_SHA))


def _read(base: Path, value, what: str):
    """An inline value, or the contents of a path relative to `base`."""
    if isinstance(value, str):
        path = base / value
        if not path.is_file():
            raise FileNotFoundError(f"{what}: file '{path}' named in {base / RUNS_FILE} does not exist")
        return path.read_text()
    return value


def from_studies(ref: str, study_roots: list[Path]) -> RecordedResult:
    """The entry whose hash starts with `ref` in `<root>/*/runs.json` (exactly one must match)."""
    matches = []
    for root in study_roots:
        for file in sorted(Path(root).glob(f"*/{RUNS_FILE}")):
            matches += [(file, h, e) for h, e in json.loads(file.read_text()).items() if h.startswith(ref.lower())]
    if not matches:
        raise LookupError(f"no pinned study lists config hash '{ref}' (searched {[str(r) for r in study_roots]})")
    if len(matches) > 1:
        raise LookupError(f"config hash '{ref}' is ambiguous: {[f'{f}: {h[:12]}' for f, h, _ in matches]}")
    file, full, entry = matches[0]
    config = _read(file.parent, entry["config"], "config")
    reqs = _read(file.parent, entry.get("requirements"), "requirements")
    return RecordedResult(str(file), entry.get("run_id"), full,
                  OmegaConf.create(config),
                  {k: float(v) for k, v in entry["metrics"].items()},
                  "".join(f"{line}\n" for line in reqs) if isinstance(reqs, list) else reqs, entry.get("git_sha"))


def pin(record: RecordedResult, study_dir: Path, command: str | None = None) -> Path:
    """Add `record` to `study_dir/runs.json` (config and requirements as files beside it); returns runs.json."""
    study_dir.mkdir(parents=True, exist_ok=True)
    short = short_hash(record.config_hash)
    config, env = Path("configs") / f"{short}.yaml", Path("env") / f"{short}.txt"
    for rel, text in ((config, OmegaConf.to_yaml(record.cfg)), (env, record.requirements)):
        if text is not None:
            (study_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(study_dir / rel, text)
    file = study_dir / RUNS_FILE
    runs = json.loads(file.read_text()) if file.exists() else {}
    runs[record.config_hash] = {"config": config.as_posix(), "metrics": record.metrics,
                                "requirements": env.as_posix() if record.requirements is not None else None,
                                "git_sha": record.git_sha, "run_id": record.run_id,
                                **({"command": command} if command else {})}
    atomic_write(file, json.dumps(runs, indent=2, sort_keys=True) + "\n")
    return file


def parse_requirements(text: str | None) -> dict[str, str]:
    """`name==version` lines -> {name: version} (names lower-cased)."""
    out = {}
    for line in (text or "").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            out[name.lower()] = version
    return out


def env_diff(recorded: str | None, current: str) -> list[tuple[str, str, str]]:
    """(package, recorded version, current version) for every difference; `-` = not installed / not recorded."""
    rec, cur = parse_requirements(recorded), parse_requirements(current)
    return [(name, rec.get(name, "-"), cur.get(name, "-"))
            for name in sorted(rec.keys() | cur.keys()) if rec.get(name) != cur.get(name)]
