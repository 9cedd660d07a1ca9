"""`synthmed evaluate`: the full metric suite on a trained run, logged back to it (or to a child run)."""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext

import hydra
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from synthmed.config import CONF_DIR, instantiate, register_resolvers
from synthmed.evaluation.step import Evaluation, evaluate_generation, record
from synthmed.metrics.lesions import summary_line
from synthmed.models.conditioning import set_guidance
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.restore import restore_for_sampling
from synthmed.tracking.results import log_result

log = logging.getLogger(__name__)


def target_run(client: MlflowClient, run, child: bool) -> mt.RunRef:
    """The trained run itself, or a new child of it (`mlflow.parentRunId`) named `<run name>-eval`."""
    if not child:
        return mt.RunRef(client, run.info.run_id)
    tags = {k: v for k, v in run.data.tags.items() if k.startswith(tk.PREFIX) and ".fid." not in k}
    return mt.child_run(client, run, f"{run.info.run_name}-eval", tags | {tk.EVALUATES: run.info.run_id})


def evaluate(cfg: DictConfig) -> Evaluation:
    """Restore run `cfg.run`, sample `cfg.n_samples` with `cfg.seed`, score them and record metrics/eval.json."""
    if cfg.get("guidance_scale") is not None and not cfg.child_run:  # refused before anything is downloaded
        # Metrics at another guidance weight would overwrite the trained run's own under the same keys.
        raise ValueError(f"guidance_scale={cfg.guidance_scale} needs child_run=true: the metrics then go to a child "
                         f"run of {cfg.run} instead of replacing the trained run's")
    client, restored = restore_for_sampling(cfg)
    model = restored.model
    guidance = set_guidance(model, cfg.get("guidance_scale"))
    # The real reference comes from the recorded data config (the phantoms regenerate; files must still exist).
    datamodule = instantiate(restored.cfg.dataset.datamodule, "dataset.datamodule")
    suite = instantiate(cfg.metrics, "metrics")
    evaluation = evaluate_generation(model, datamodule, suite, cfg.n_samples, cfg.seed, cfg.split, cfg.n_real,
                                     translation=True)
    out = target_run(client, restored.run, cfg.child_run)
    # A child run is ours to close; the trained run keeps the status its training gave it.
    with mt.run_status(client, out.run_id) if cfg.child_run else nullcontext():
        log_result(out, evaluation, restored.step)
        meta = {"seed": cfg.seed, "split": cfg.split, "checkpoint": cfg.checkpoint, "evaluated_run": cfg.run}
        if guidance is not None:
            meta["guidance_scale"] = guidance
            mt.set_tags(client, out.run_id, {tk.EVAL_GUIDANCE: guidance})
        mt.log_json(client, out.run_id, record(evaluation, restored.step, **meta), "metrics/eval.json")
    print(json.dumps({"run_id": out.run_id, "metrics": evaluation.result.values}, indent=2), flush=True)
    lesions = summary_line(evaluation.result.values)
    if lesions:  # stdout stays one JSON document; the readable line goes to the log
        log.info("lesions (%s split): %s", cfg.split, lesions)
    return evaluation


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


register_resolvers()

if __name__ == "__main__":
    main()
