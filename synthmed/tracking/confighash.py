"""The config hash: the identity of a result.

SHA-256 of the canonical JSON (sorted keys, no whitespace) of the resolved config with the keys that cannot change
a result removed (DESIGN.md, "Config hash"). Same config -> same hash, whatever the override order; a changed path,
logger, progress bar or worker count does not change it; a changed seed, step count or batch size does.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Whole top-level groups that only say where and how a run is recorded, not what it computes. `callbacks` hold
# only observers (grids, periodic metrics, checkpoints, progress bars); the final evaluation lives in `eval`.
NON_SEMANTIC_GROUPS = ("paths", "logger", "tracking", "hydra", "callbacks", "experiment_name", "task_name", "tags",
                       "resume", "print_config")
# Keys dropped wherever they appear: logging frequency, progress display, data-loading parallelism.
NON_SEMANTIC_KEYS = ("num_workers", "persistent_workers", "pin_memory", "enable_progress_bar",
                     "enable_model_summary", "log_every_n_steps", "val_check_interval", "check_val_every_n_epoch",
                     "num_sanity_val_steps", "limit_val_batches", "default_root_dir", "progress",
                     "cache", "hash_contents",
                     # What a diverging step does: a run with no non-finite step computes the same either way, and
                     # one that skipped steps records train/skipped_steps (and failed runs have no result to hash).
                     "nonfinite", "nonfinite_max_skips", "heartbeat_s", "resume_fallback")
HASH_DISPLAY_LEN = 12


def _is_location(value: Any, locations: tuple[str, ...]) -> bool:
    # A leaf that interpolates `paths` (raw config) or equals/sits under a `paths` value (a recorded, resolved
    # config) is a location, not a setting: both forms of one config must hash alike for `synthmed reproduce`.
    if not isinstance(value, str):
        return False
    return "${paths." in value or "${hydra:" in value or value.startswith(locations)


def _strip(node: Any, locations: tuple[str, ...]) -> Any:
    """Copy of a container without the non-semantic keys and location leaves."""
    if isinstance(node, dict):
        return {k: _strip(v, locations) for k, v in node.items()
                if k not in NON_SEMANTIC_KEYS and not _is_location(v, locations)}
    if isinstance(node, list):
        return [_strip(v, locations) for v in node]
    return node


def _path_values(raw: dict) -> tuple[str, ...]:
    """Concrete output/cache folders under `paths` (e.g. `/tmp/x/.cache/synthmed`) of a resolved config.

    `root` itself is left out: a data set may live inside the project folder and its path is a setting.
    """
    paths = raw.get("paths") or {}
    return tuple(v for k, v in paths.items()
                 if k != "root" and isinstance(v, str) and "${" not in v and v not in ("", ".", "/"))


def _without_root_alias(kept: dict) -> dict:
    """`dataset.root` is the short spelling of `dataset.datamodule.dataset.root`, which holds the same path (or
    the path given the old way while `dataset.root` stays unset): only the data set's own key counts, so both
    spellings hash alike."""
    data = kept.get("dataset")
    nested = ((data or {}).get("datamodule") or {}).get("dataset") if isinstance(data, dict) else None
    if not isinstance(nested, dict) or "root" not in nested or "root" not in data:
        return kept
    return {**kept, "dataset": {k: v for k, v in data.items() if k != "root"}}


def semantic_config(cfg: DictConfig) -> dict:
    """The resolved config minus everything in NON_SEMANTIC_GROUPS / NON_SEMANTIC_KEYS, as plain containers."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    kept = {k: v for k, v in raw.items() if k not in NON_SEMANTIC_GROUPS}
    kept = _without_root_alias(kept)
    # Resolve against the full config so that kept keys may still interpolate dropped ones (e.g. ${dataset.name}).
    # Only the kept subtree is resolved: the hydra node's own interpolations need a running Hydra app.
    full = OmegaConf.create({**raw, "__kept__": _strip(kept, _path_values(raw))})
    return OmegaConf.to_container(full.__kept__, resolve=True)


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace: one byte string per config."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(cfg: DictConfig) -> str:
    """Full 64-hex SHA-256 of the semantic config; show `short_hash(h)` to people."""
    return hashlib.sha256(canonical_json(semantic_config(cfg)).encode()).hexdigest()


def short_hash(full: str) -> str:
    """The displayed form: the first 12 hex digits."""
    return full[:HASH_DISPLAY_LEN]
