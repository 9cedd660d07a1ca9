"""Results table of the rare-class upsampling study: for every trained run of the experiment and each guidance scale
it was evaluated at, the share of samples the conditioning classifier reads as what was requested.

    python experiments/rare_class_upsampling_phantom/table.py --root /tmp/rcu
    python experiments/rare_class_upsampling_phantom/table.py --root /tmp/rcu --trained-runs [--balance label] [--model ddpm]
"""

from __future__ import annotations

import argparse

from mlflow.tracking import MlflowClient

from synthmed.metrics import names
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk

EXPERIMENT = "rare_class_upsampling"
LESION = names.per_class(names.COND_ACCURACY, 1)  # asked for a lesion, read as a lesion
HEALTHY = names.per_class(names.COND_ACCURACY, 0)  # asked for healthy, read as healthy


def runs(client: MlflowClient) -> tuple[list, list]:
    """(trained runs, evaluation child runs) of the experiment, finished ones only, oldest first."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise SystemExit(f"no MLflow experiment '{EXPERIMENT}' in this store: run run.sh first")
    done = sorted((r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"
                   and r.data.tags.get(tk.CONFIG_HASH)), key=lambda r: r.info.start_time)
    trained = [r for r in done if tk.EVALUATES not in r.data.tags]
    return trained, [r for r in done if tk.EVALUATES in r.data.tags]


def balance(run) -> str:
    value = run.data.params.get("dataset.datamodule.balance", "None")
    return "data mix (10% lesions)" if value in ("None", "null") else f"balanced ({value})"


def table(trained: list, evals: list) -> str:
    lines = ["| model | training draws | run | guidance | asked lesion: read lesion | asked healthy: read healthy | "
             "balanced accuracy | MS-SSIM between samples (lower = more varied) |", "|---|---|---|---|---|---|---|---|"]
    for run in trained:
        trained_scale = run.data.params.get("model.guidance_scale")  # a GAN has no guidance
        scored = [(float(trained_scale) if trained_scale else None, run)]
        scored += [(float(e.data.tags[tk.EVAL_GUIDANCE]), e) for e in evals
                   if e.data.tags[tk.EVALUATES] == run.info.run_id]
        for gs, r in sorted(scored, key=lambda s: -(s[0] or 0)):
            m = r.data.metrics
            lines.append(f"| {run.data.tags.get(tk.MODEL, '?')} | {balance(run)} | `{run.info.run_id[:8]}` | "
                         f"{'-' if gs is None else f'{gs:g}'} | {m[LESION]:.3f} | {m[HEALTHY]:.3f} | "
                         f"{m[names.COND_BALANCED_ACCURACY]:.3f} | {m[names.MS_SSIM_DIVERSITY]:.3f} |")
    ceiling = trained[0].data.metrics.get(names.on_real(names.COND_BALANCED_ACCURACY)) if trained else None
    if ceiling is not None:
        lines.append(f"| real val images (the reader's ceiling) | | | | | | {ceiling:.3f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="paths.root of the study (its mlflow.db)")
    parser.add_argument("--trained-runs", action="store_true", help="print the trained run ids instead")
    parser.add_argument("--balance", help="with --trained-runs: only runs with this dataset.datamodule.balance")
    parser.add_argument("--model", help="with --trained-runs: only runs of this model config (ddpm, gan)")
    args = parser.parse_args()
    client = MlflowClient(mt.tracking_uri(None, args.root))
    trained, evals = runs(client)
    if args.trained_runs:
        print(" ".join(r.info.run_id for r in trained
                       if (args.balance is None or r.data.params.get("dataset.datamodule.balance") == args.balance)
                       and (args.model is None or r.data.tags.get(tk.MODEL) == args.model)))
        return
    print(table(trained, evals))


if __name__ == "__main__":
    main()
