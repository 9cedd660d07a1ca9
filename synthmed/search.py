"""Optuna searches (conf/hparams_search/): which metric a trial returns, in which direction, checked before training.

- The pinned `hydra.sweeper.direction` is checked against the metric's declared direction before any trial trains
  (`SearchCheck`, a Hydra callback that runs before the sweep's MLflow parent exists): a search that would
  minimise recall is refused with the direction to set.
- A target metric (MS-SSIM diversity) is optimised as its distance to the real data's value (`*_gap`), so a
  generator of pure noise, whose diversity is the lowest, is never the best trial.
- Without the Inception weights an Inception-feature objective (FID, KID, precision/recall, density/coverage) falls
  back to `optimized_metric_offline` (the in-domain Frechet distance) when the search names one, in the same
  direction and said in the run's tags; otherwise the search stops before the first trial trains.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from synthmed.metrics import names
from synthmed.metrics.directions import objective_key, search_direction
from synthmed.metrics.inception import resolve_weights

# keys computed on Inception features: they need the weights file
INCEPTION_KEYS = frozenset({names.FID, names.FID_AXIAL, names.FID_CORONAL, names.FID_SAGITTAL, names.KID,
                            names.PRECISION, names.RECALL, names.DENSITY, names.COVERAGE,
                            names.MEMORIZATION_RATE_FEATURE})


class ObjectiveError(ValueError):
    """The search's objective cannot be computed or is optimised the wrong way: refused before training."""


def direction_resolver(key: str) -> str:
    """`${direction:val/fid}` -> "minimize": the sweeper's direction, derived from the metric, never retyped."""
    found = search_direction(key)
    if found is None:
        raise ObjectiveError(f"optimized_metric '{key}' has no better direction (synthmed/metrics/directions.py): "
                             "it cannot be a search objective")
    return found


def check_direction(key: str, pinned: str) -> None:
    """Refuse a sweeper direction that disagrees with the metric's (e.g. minimising recall)."""
    wanted = direction_resolver(key)
    if str(pinned).lower() != wanted:
        raise ObjectiveError(f"hydra.sweeper.direction={pinned} but optimized_metric '{key}' is searched with "
                             f"direction {wanted}: drop the pinned direction (it follows the metric) or set it")


def weights_available(cfg: DictConfig) -> bool:
    try:
        resolve_weights(cfg.metrics.get("fid_weights"))
    except FileNotFoundError:
        return False
    return True


def plan_objective(cfg: DictConfig) -> tuple[str, str | None]:
    """(the metric key a trial returns, a note when it differs from `optimized_metric`), decided before training.

    Raises ObjectiveError when the objective cannot be computed on this machine and no fallback is configured.
    """
    key = str(cfg.optimized_metric)
    direction_resolver(key)
    if key not in INCEPTION_KEYS or weights_available(cfg):
        return objective_key(key), None
    offline = cfg.get("optimized_metric_offline")
    if not offline:
        raise ObjectiveError(f"optimized_metric '{key}' needs the FID Inception weights, which are absent: run "
                             "`synthmed weights fetch`, or set optimized_metric_offline=${metric:FD_DOMAIN}")
    if search_direction(str(offline)) != search_direction(key):
        raise ObjectiveError(f"optimized_metric_offline '{offline}' is not optimised in the direction of '{key}'")
    note = f"{key} needs the Inception weights, absent here: optimised {offline} instead (same direction)"
    return objective_key(str(offline)), note


def objective_value(values: dict[str, float], key: str) -> float:
    """The number a trial returns to Optuna for the planned objective `key` (from `plan_objective`)."""
    if key not in values:
        raise KeyError(f"the search objective '{key}' was not computed (got {sorted(values)}); see the run's "
                       "synthmed.*.skipped tags")
    return float(values[key])


class SearchCheck(Callback):
    """Hydra callback: before a multirun with an `optimized_metric` starts its first job, check the sweeper's
    direction against the metric and that the objective (or its offline fallback) can be computed here."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("optimized_metric"):
            return
        try:
            pinned = config.hydra.sweeper.get("direction")
            if pinned is not None:  # the basic sweeper has none; Optuna's defaults to minimize when unset
                check_direction(str(config.optimized_metric), str(pinned))
            plan_objective(config)
        except Exception as err:
            # Hydra turns an exception in a callback into a warning and goes on (the sweep's parent run would be
            # created next): stop the multirun itself, before any job or MLflow run exists.
            print(f"synthmed train: {err}", file=sys.stderr, flush=True)
            raise SystemExit(2) from err
