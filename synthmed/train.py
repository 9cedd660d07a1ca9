"""`synthmed train`: seed -> data -> model -> callbacks -> logger -> trainer -> fit -> evaluate -> record.

`resume=<run id | config hash | last>` continues a killed or failed run of the same config in its MLflow run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from synthmed import search
from synthmed.callbacks.checkpoint import quiet_fresh_start_notices, save_final
from synthmed.callbacks.nonfinite import split_guard
from synthmed.callbacks.progress import progress_bars
from synthmed.config import CONF_DIR, check_dataset, check_targets, instantiate, register_resolvers
from synthmed.evaluation.step import evaluate_generation
from synthmed.metrics import names
from synthmed.nets.sizes import check_image_size
from synthmed.tracking import heartbeat as hb
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.confighash import config_hash, short_hash
from synthmed.tracking.first_stage import build_model
from synthmed.tracking.lifecycle import SignalGuard
from synthmed.tracking.refs import run_ref
from synthmed.tracking.resume import find_resume
from synthmed.tracking.run_record import print_summary, record_final, record_start, system_metrics
from synthmed.tracking.sweep import in_multirun

log = logging.getLogger(__name__)


def build_callbacks(cfg: DictConfig, suite) -> list[pl.Callback]:
    """Every entry of `callbacks`; one that declares `suite: null` gets the run's MetricSuite."""
    out = []
    for key, node in (cfg or {}).items():
        extra = {"suite": suite} if "suite" in node and node.suite is None else {}
        out.append(instantiate(node, f"callbacks.{key}", **extra))
    return out


def refuse_stale_checkpoints(folder: Path) -> None:
    """A new run must not start where an earlier one left checkpoints: with `OnExceptionCheckpoint` among the
    callbacks, Lightning turns `fit(ckpt_path=None)` into `"last"` and would silently continue that run."""
    stale = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if stale:
        raise FileExistsError(f"{folder} already holds checkpoints of an earlier run ({', '.join(stale)}): continue "
                              f"it with resume=<run id | config hash | last>, or give this run its own "
                              f"paths.output_dir")


def final_metric_names(cfg: DictConfig, model) -> list[str]:
    """`eval.metrics`, plus `eval.cond_metrics` for a model trained with `model.cond` (only a conditional model
    can be asked for what it generates)."""
    extra = list(cfg.eval.get("cond_metrics") or []) if model.is_conditional else []
    return list(cfg.eval.metrics) + [m for m in extra if m not in cfg.eval.metrics]


def logged_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The last value of every metric the model itself logged (e.g. a VAE's `val/psnr`), keys from names.py."""
    known = set(names.all_names().values())
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k in known and v.numel() == 1}


def train(cfg: DictConfig, tags: dict[str, str] | None = None, with_logged: bool = False) -> dict[str, float]:
    """Train, evaluate and record one run; returns the final metrics (keys from metrics/names.py), as in
    metrics/final.json; `with_logged` adds, where the evaluation does not compute them, the last values the model
    logged itself (`val/psnr`: a search objective).

    SIGINT/SIGTERM end the run KILLED and raise `Interrupted` (exit status 130/143); see tracking/lifecycle.py.
    """
    with SignalGuard() as signals:
        return _train(cfg, signals, tags or {}, with_logged)


def _train(cfg: DictConfig, signals: SignalGuard, tags: dict[str, str], with_logged: bool) -> dict[str, float]:
    check_dataset(cfg)  # dataset.root given, image_shape agrees with dataset.size
    check_targets(cfg)
    check_image_size(cfg)  # before any run exists: a size the network cannot take is a config error
    mt.check_store(cfg)  # a server that is down, or sqlite on NFS: said now, not after loading data or retries
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    model, link_tags = build_model(cfg, in_multirun())  # before the hash: it covers an ldm's first stage
    if cfg.get("compile"):
        log.info("torch.compile: %s", model.compile_networks())
    suite = instantiate(cfg.metrics, "metrics")
    full_hash = config_hash(cfg)
    resume = (find_resume(mt.tracking_client(cfg), run_ref(cfg, "resume"), full_hash, cfg.get("resume_fallback", "none"))
              if cfg.get("resume") else None)
    if resume is None:
        refuse_stale_checkpoints(Path(cfg.paths.output_dir) / "checkpoints")
    logger = mt.make_logger(cfg, model.family, datamodule.fingerprint, full_hash, resume and resume.run_id)
    run = mt.RunRef(logger.experiment, logger.run_id)
    log.info("MLflow run %s (config hash %s) in %s", run.run_id, short_hash(full_hash), run.client.tracking_uri)
    beats = hb.beating(run.client, run.run_id, cfg.get("heartbeat_s", 60), enabled=rank_zero_only.rank == 0)
    with mt.run_status(run.client, run.run_id), beats:  # a SIGKILLed run stops beating: `synthmed runs reap`
        if resume is None:
            record_start(run, logger, cfg, datamodule, full_hash, model.family)
        else:
            run.client.update_run(run.run_id, status="RUNNING")
        ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
        mt.set_tags(run.client, run.run_id, {tk.CHECKPOINT_DIR: ckpt_dir, **link_tags, **tags})
        monitor = system_metrics(cfg, run)
        try:  # the sampler thread stops however the run ends (a failure or a signal included)
            nonfinite, trainer_args = split_guard(cfg.trainer)
            callbacks = [nonfinite, *build_callbacks(cfg.callbacks, suite),
                         *progress_bars(cfg.trainer.enable_progress_bar)]
            trainer = pl.Trainer(**trainer_args, **cfg.hardware, callbacks=callbacks, logger=logger,
                                 default_root_dir=cfg.paths.output_dir)
            with signals.fitting(), quiet_fresh_start_notices():
                trainer.fit(model, datamodule=datamodule, ckpt_path=resume and resume.checkpoint, weights_only=True)
            with signals.critical():  # a half-written final.ckpt must never be what resume= picks
                ckpt = save_final(trainer, ckpt_dir)
            evaluation = None
            if trainer.is_global_zero:  # one rank scores the samples: each counted once, as on one device
                final_suite = suite.with_metrics(final_metric_names(cfg, model))  # Inception, features loaded once
                evaluation = evaluate_generation(model, datamodule, final_suite, cfg.eval.n_samples, cfg.eval.seed,
                                                 cfg.eval.split, cfg.eval.n_real, translation=True)
                with signals.critical(stop_after=False):
                    record_final(run, trainer, evaluation, cfg, ckpt)
        finally:
            if monitor is not None:
                monitor.finish()
    if evaluation is not None:
        print_summary(run, full_hash, evaluation.result.values)
    signals.check()  # a signal while the record was written: the record is complete, the exit status still says so
    if evaluation is None:
        return {}
    return {**(logged_metrics(trainer) if with_logged else {}), **evaluation.result.values}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    if not cfg.get("optimized_metric"):
        train(cfg)
        return None
    key, note = search.plan_objective(cfg)  # before training: an objective that cannot be computed stops here
    tags = {tk.SEARCH_OBJECTIVE: key, **({tk.SEARCH_OBJECTIVE_NOTE: note} if note else {})}
    values = train(cfg, tags, with_logged=True)
    return search.objective_value(values, key) if values else None  # no values: a DDP rank other than zero


register_resolvers()

if __name__ == "__main__":
    main()
