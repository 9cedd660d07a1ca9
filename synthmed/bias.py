"""`synthmed bias run=<id | hash> by=[sex,age_band]`: every number per patient group, with intervals.

Reads like a table of contents: check the request -> restore the run -> its data -> sample and read the samples
(layers 1 and 2) -> the utility run's predictions (layer 3) -> write bias.json/.md/.html -> a child run tagged
`synthmed.report=bias`. The statistics live in metrics/fairness.py and metrics/bias.py, the rendering in
reports/bias.py.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import hydra
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from synthmed.config import CONF_DIR, instantiate, register_resolvers
from synthmed.data.datamodule import covariates
from synthmed.evaluation.bias import check_groupings, model_layers
from synthmed.metrics import bias as B
from synthmed.metrics import fairness as fair
from synthmed.metrics import names
from synthmed.reports import bias as R
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.restore import restore_for_sampling

log = logging.getLogger(__name__)
PREDICTIONS = "utility/predictions.csv"  # written by `synthmed utility` (issue 14) on its report run


def check_request(cfg: DictConfig) -> None:
    """Refuse a bad request before anything is restored, sampled or trained; errors name the key."""
    by = list(cfg.by) if OmegaConf.is_list(cfg.by) else None
    if not by or len(set(by)) != len(by):
        raise ValueError(f"by: expected a list of distinct groupings such as [sex,age_band], got {cfg.by!r}")
    fair.age_bands([float(cfg.age_bands[0])], cfg.age_bands)  # raises naming age_bands when not increasing
    checks = {"n_samples": cfg.n_samples >= 2, "n_boot": cfg.n_boot >= 0, "min_n": cfg.min_n >= 1,
              "min_pos": cfg.min_pos >= 1, "kid_subsets": cfg.kid_subsets >= 1, "threshold": 0 <= cfg.threshold <= 1,
              "split": cfg.split in ("val", "test")}
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"{key}={cfg[key]!r} is out of range (see conf/bias.yaml for what it expects)")
    if cfg.predictions is not None and not Path(cfg.predictions).is_file():
        raise ValueError(f"predictions={cfg.predictions}: no such file (expected a utility predictions.csv)")


def utility_predictions(client: MlflowClient, run, cfg: DictConfig) -> tuple[pd.DataFrame | None, str]:
    """The predictions of layer 3 (`cfg.predictions`, else the newest utility child run's) and where they came
    from, or (None, how to get them)."""
    if cfg.predictions is not None:
        return B.read_predictions(cfg.predictions, cfg.by, cfg.age_bands), str(cfg.predictions)
    found = client.search_runs([run.info.experiment_id], order_by=["attributes.start_time DESC"],
                               filter_string=f"tags.`{tk.PARENT_RUN}` = '{run.info.run_id}' "
                                             f"and tags.`{tk.REPORT}` = 'utility'")
    for child in found:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = client.download_artifacts(child.info.run_id, PREDICTIONS, tmp)
                return B.read_predictions(path, cfg.by, cfg.age_bands), f"run {child.info.run_id} ({PREDICTIONS})"
        except OSError as err:  # MLflow raises an OSError subclass for a missing artifact
            log.warning("utility run %s has no %s: %s", child.info.run_id, PREDICTIONS, err)
    return None, (f"no utility report run of {run.info.run_id} holds {PREDICTIONS}: run `synthmed utility "
                  f"run={run.info.run_id}` first (or pass predictions=FILE), then rerun this command")


def headline_metrics(report: dict) -> dict[str, float]:
    """The report's gap statistics as MLflow metrics (keys from names.py; NaN ones left out)."""
    out = {}
    for name, rep in report["representation"].items():
        vs = rep["vs_heldout_read"]
        out[names.per_grouping(names.BIAS_REPRESENTATION_TVD, name)] = vs["tvd"]["value"]
        out[names.per_grouping(names.BIAS_REPRESENTATION_MAX_GAP, name)] = max(abs(g["gap"]["value"])
                                                                              for g in vs["groups"])
        out[names.per_grouping(names.BIAS_READER_FLOOR_TVD, name)] = rep["reader_floor"]["tvd"]["value"]
        fid = report["fidelity"][name]
        out[names.per_grouping(names.BIAS_KID_DIFFERENCE, name)] = fid["kid_gap"]["difference"]
        for label, gap in fid.get("by_label", {}).get("kid_gap", {}).items():  # e.g. ..._sex_x_label_1
            out[names.per_grouping(names.BIAS_KID_DIFFERENCE, f"{name}{fair.INTERSECT_SEP}label", label)] = \
                gap["difference"]
    keys = {"auroc": names.BIAS_AUROC_DIFFERENCE, "sensitivity": names.BIAS_SENSITIVITY_DIFFERENCE,
            "fnr": names.BIAS_FNR_DIFFERENCE, "fpr": names.BIAS_FPR_DIFFERENCE}
    for name, d in report["downstream"].get("by_grouping", {}).items():
        for cond, per in d["gaps"].items():
            for m, s in per.items():
                out[names.per_grouping(keys[m], name, cond)] = s["difference"]["value"]
        for per in d["changes"].values():
            for m, c in per.items():
                out[names.per_grouping(names.gap_change(keys[m]), name)] = c["difference"]["value"]
    return {k: v for k, v in out.items() if v is not None and v == v}


def bias(cfg: DictConfig) -> dict:
    """Score run `cfg.run` per patient group, write the report and log it as a child run. Returns the report."""
    check_request(cfg)
    client, restored = restore_for_sampling(cfg)
    datamodule = instantiate(restored.cfg.dataset.datamodule, "dataset.datamodule")
    check_groupings(cfg.by, list(covariates(datamodule.split("train"), 1)), f"data set {restored.cfg.dataset.name}")
    predictions, source = utility_predictions(client, restored.run, cfg)  # a bad file fails before sampling
    suite = instantiate(cfg.metrics, "metrics")
    groups = {"by": list(cfg.by), "edges": list(cfg.age_bands), "intersect": bool(cfg.intersect)}
    layers = model_layers(restored.model, datamodule, suite.encoders, n_samples=cfg.n_samples, seed=cfg.seed,
                          split=cfg.split, n_real=cfg.n_real, min_n=cfg.min_n, n_boot=cfg.n_boot,
                          kid_subsets=cfg.kid_subsets, pr_k=suite.pr_k, dc_k=suite.dc_k,
                          memorization_quantile=suite.memorization_quantile, batch_size=suite.batch_size, **groups)
    downstream = {"skipped": source}
    if predictions is not None:
        downstream = B.downstream_layer(predictions, **groups, baseline=cfg.baseline, candidate=cfg.candidate,
                                        threshold=cfg.threshold, min_n=cfg.min_n, min_pos=cfg.min_pos,
                                        n_boot=cfg.n_boot, seed=cfg.seed) | {"source": source}
    run = restored.run
    report = {"run": {"id": run.info.run_id, "name": run.info.run_name,
                      "config_hash": run.data.tags.get(tk.CONFIG_HASH, "")[:12]},
              "seed": cfg.seed, "split": cfg.split, "by": list(cfg.by) + (["intersections"] if cfg.intersect else []),
              "age_bands": list(cfg.age_bands), "n_boot": cfg.n_boot, "min_n": cfg.min_n, "min_pos": cfg.min_pos,
              **layers, "downstream": downstream}
    folder = Path(cfg.paths.output_dir) / "bias"
    R.write(report, folder)
    report["report_run_id"] = mt.report_run(client, run.info.experiment_id, "bias", folder, f"{run.info.run_name}-bias",
                                            {tk.EVALUATES: run.info.run_id}, parent=run,
                                            metrics=headline_metrics(report), artifact_path="bias",
                                            params={k: str(report[k]) for k in ("by", "age_bands", "seed", "split",
                                                                                 "n_boot", "min_n", "min_pos")})
    print(json.dumps({"report_run_id": report["report_run_id"], "folder": str(folder),
                      "metrics": headline_metrics(report)}, indent=2), flush=True)
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="bias")
def main(cfg: DictConfig) -> None:
    bias(cfg)


register_resolvers()

if __name__ == "__main__":
    main()
