"""`synthmed utility run=<id|hash>`: does training a classifier on a run's synthetic images help?

Reads like its table of contents: settings -> generator run(s) -> real splits (as the generator's run recorded
them) -> harness (synthmed/evaluation/utility.py) -> report folder -> an MLflow child run of the generator's run
tagged `synthmed.report=utility`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from synthmed.config import CONF_DIR, instantiate, register_resolvers
from synthmed.evaluation.utility import LabelledSplit, ModelSource, Seen, UtilitySettings, run_utility
from synthmed.io import atomic_write
from synthmed.metrics import names
from synthmed.models.conditioning import set_guidance
from synthmed.reports import bias as bias_report
from synthmed.reports.utility import write_report
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.refs import run_ref
from synthmed.tracking.restore import Restored, restore_run


def settings_of(cfg: DictConfig) -> UtilitySettings:
    """The harness settings from conf/utility.yaml keys, checked before any run is loaded."""
    labels = OmegaConf.to_container(cfg.synth_labels, resolve=True) if cfg.synth_labels is not None else None
    settings = UtilitySettings(regimes=list(cfg.regimes), real_fraction=[float(f) for f in cfg.real_fraction],
                               seeds=int(cfg.seeds), synth_ratio=float(cfg.synth_ratio),
                               synth_labels={int(k): float(v) for k, v in labels.items()} if labels else None,
                               n_boot=int(cfg.n_boot), min_test_positives=int(cfg.min_test_positives),
                               boot_seed=int(cfg.boot_seed))
    settings.check(None)
    return settings


def generator_refs(cfg: DictConfig) -> dict[int | None, str]:
    """``{None: ref}`` for a conditional run, ``{class: ref}`` for one run per class (keys `run` / `runs`)."""
    if (cfg.run is None) == (cfg.runs is None):
        raise ValueError("give exactly one of run=<id|hash> (a label-conditioned run) or runs={0: <id|hash>, "
                         "1: <id|hash>} (one unconditional run per class)")
    if cfg.run is not None:
        return {None: run_ref(cfg, "run")}
    refs = {}
    for key, value in cfg.runs.items():
        if not isinstance(value, str):  # Hydra typed it: 1234e5 -> 1.234e+08; the hash text is lost
            raise ValueError(f"runs.{key}={value!r}: quote run references in runs=, e.g. runs={{0:'1234e5',1:'...'}}")
        refs[int(key)] = value
    return refs


def restore_generators(cfg: DictConfig, client: MlflowClient) -> dict[int | None, Restored]:
    cache = Path(cfg.paths.cache_dir) / "runs"
    restored = {c: restore_run(client, ref, cache, cfg.checkpoint) for c, ref in generator_refs(cfg).items()}
    for r in restored.values():
        r.model.to(cfg.device)
        r.model.sample_batch_size = cfg.batch_size
        if cfg.guidance_scale is not None:
            set_guidance(r.model, cfg.guidance_scale)
    return restored


def real_splits(cfg: DictConfig, first: Restored) -> tuple[dict[str, LabelledSplit], str]:
    """Train, val and test splits of the generator's recorded data set (with `data` overrides); its fingerprint."""
    node = OmegaConf.create(OmegaConf.to_container(first.cfg.dataset.datamodule, resolve=True))
    for key, value in (cfg.data or {}).items():
        node.dataset[key] = value
    datamodule = instantiate(node, "dataset.datamodule")
    where = f"data set '{first.cfg.dataset.name}' of run {first.run.info.run_id}"
    splits = {name: LabelledSplit.of(datamodule.split(split), split, where)
              for name, split in (("train", "train"), ("val", cfg.val_split), ("test", cfg.test_split))}
    return splits, datamodule.fingerprint


def generator_seen(restored: Restored) -> Seen:
    """What a generator trained on: its recorded data set's train split, rebuilt and checked against the run's
    fingerprint tag (a changed data set cannot be checked for leakage, so it is refused)."""
    datamodule = instantiate(restored.cfg.dataset.datamodule, "dataset.datamodule")
    recorded = restored.run.data.tags.get(tk.DATASET_FINGERPRINT)
    if recorded and recorded != datamodule.fingerprint:
        raise ValueError(f"run {restored.run.info.run_id}: its data set now has fingerprint "
                         f"{datamodule.fingerprint[:12]}, the run recorded {recorded[:12]}; what it trained on cannot "
                         f"be rebuilt, so the test split cannot be checked for leakage")
    return Seen.of(LabelledSplit.of(datamodule.split("train"), "train", f"run {restored.run.info.run_id}"))


def mlflow_metrics(summary: dict) -> list[Metric]:
    """Every regime metric and gain (with its interval) per real fraction, step = the fraction in per mille."""
    now, out = int(time.time() * 1000), []
    for entry in summary["fractions"]:
        step = int(round(1000 * entry["real_fraction"]))

        def add(key: str, value: float, step: int = step) -> None:
            out.append(Metric(key, float(value), now, step))

        for regime, stats in entry["regimes"].items():
            for metric, key in names.UTILITY_METRICS.items():
                add(names.per_regime(key, regime), stats[metric]["mean"])
        for regime, gain in entry["gains"].items():
            for metric, key in names.UTILITY_GAINS.items():
                key = names.gain_of(key, regime)
                add(key, gain[metric]["mean"])
                add(names.ci_low(key), gain[metric]["ci_low"])
                add(names.ci_high(key), gain[metric]["ci_high"])
    return out


def utility(cfg: DictConfig) -> dict:
    """Run the harness on run `cfg.run` (or `cfg.runs`), write the report and log its child run; returns the
    summary with the report run's id."""
    settings = settings_of(cfg)
    client = MlflowClient(mt.tracking_uri(cfg.tracking_uri, cfg.paths.root))
    restored = restore_generators(cfg, client)
    first = next(iter(restored.values()))
    splits, fingerprint = real_splits(cfg, first)
    seen = {f"generator run {r.run.info.run_id}": generator_seen(r) for r in restored.values()}
    source = ModelSource({c: r.model for c, r in restored.items()}, seen, attrs=splits["train"].covariates,
                         batch_size=cfg.batch_size)
    classifier = instantiate(cfg.classifier, "classifier")
    result = run_utility(classifier, source, splits["train"], splits["val"], splits["test"], settings, fingerprint)
    runs = {("conditional" if c is None else str(c)): r.run.info.run_id for c, r in restored.items()}
    summary = result.summary | {"title": f"{first.run.info.run_name} ({', '.join(runs.values())})",
                                "classifier": classifier.name, "generator_runs": runs,
                                "synth_ratio": settings.synth_ratio, "synth_labels": settings.synth_labels}
    out = Path(cfg.out) if cfg.out else Path(cfg.paths.output_dir) / "utility"
    write_report(summary, result.predictions, out)
    if cfg.by:
        summary["downstream_by_group"] = downstream_by_group(cfg, result.predictions, out)
    run_id = mt.report_run(client, first.run.info.experiment_id, tk.REPORT_UTILITY, out,
                           f"{first.run.info.run_name}-utility", tags={tk.UTILITY_RUNS: json.dumps(runs)},
                           parent=first.run, artifact_path="utility",
                           params={"classifier": classifier.name, "seeds": settings.seeds,
                                   "real_fraction": list(settings.real_fraction), "synth_ratio": settings.synth_ratio,
                                   "regimes": list(settings.regimes), "n_test": summary["n_test"]})
    client.log_batch(run_id, metrics=mlflow_metrics(summary))
    print(json.dumps({"run_id": run_id, "report": str(out), "gains": _headline(summary)}, indent=2), flush=True)
    return summary | {"run_id": run_id}


def downstream_by_group(cfg: DictConfig, predictions: list[dict], out: Path) -> dict:
    """`by=[sex,age_band]`: the downstream layer of `synthmed bias` on these predictions (per group AUROC,
    sensitivity, FNR, FPR; gaps and their change from `real` to `real+synth`), as `bias_downstream.{json,md}`."""
    import pandas as pd

    from synthmed.metrics.bias import downstream_layer

    layer = downstream_layer(pd.DataFrame(predictions), list(cfg.by), list(cfg.age_bands), bool(cfg.intersect),
                             n_boot=int(cfg.n_boot), seed=int(cfg.boot_seed), min_n=int(cfg.min_n),
                             min_pos=int(cfg.min_pos)) | {"source": "this utility run"}
    atomic_write(out / "bias_downstream.json", json.dumps(bias_report.finite(layer), indent=2, default=str,
                                                          allow_nan=False) + "\n")
    atomic_write(out / "bias_downstream.md", "\n".join(bias_report.downstream_md(layer)) + "\n")
    return layer


def _headline(summary: dict) -> list[dict]:
    return [{"real_fraction": e["real_fraction"], "regime": name, "auroc_gain": g["auroc"]["mean"],
             "ci": [g["auroc"]["ci_low"], g["auroc"]["ci_high"]], "verdict": g["auroc"]["verdict"]}
            for e in summary["fractions"] for name, g in e["gains"].items()]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="utility")
def main(cfg: DictConfig) -> None:
    utility(cfg)


register_resolvers()

if __name__ == "__main__":
    main()
