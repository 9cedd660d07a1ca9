"""Results table of the MRI -> CT phantom study: every finished translator run of an MLflow store, scored on a held-out
split against the identity mapping and the same configs untrained, in HU inside the body mask.

    python experiments/mri_to_ct_phantom/table.py --root /tmp/m2c [--split test] [--runs ID ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from synthmed.config import instantiate, register_resolvers
from synthmed.metrics import names
from synthmed.metrics.translation import translation_metrics
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.restore import restore_run

TRANSLATORS = ("pix2pix", "cond_ddpm")


def score(model, source: torch.Tensor, target: torch.Tensor, window: dict) -> dict[str, float]:
    pred = model.sample(len(source), generator=torch.Generator().manual_seed(0), cond={"source": source})
    return translation_metrics(pred, target, None, window)


def row(label: str, run: str, values: dict[str, float]) -> str:
    return (f"| {label} | {run} | {values[names.MAE_HU]:.1f} | {values[names.PSNR_HU]:.2f} | "
            f"{values[names.SSIM_HU]:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="paths.root of the runs (holds mlflow.db)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--runs", nargs="*", help="run ids (default: every finished pix2pix/cond_ddpm run)")
    args = parser.parse_args()
    register_resolvers()
    client = MlflowClient(mt.tracking_uri(None, args.root))
    runs = args.runs or [r.info.run_id for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"]) if r.data.tags.get(tk.MODEL) in TRANSLATORS]
    lines, identity = [], None
    for run_id in runs:
        restored = restore_run(client, run_id, Path(args.root) / ".cache" / "runs")
        datamodule = instantiate(restored.cfg.dataset.datamodule, "dataset.datamodule")
        source, target = datamodule.sources(args.split), datamodule.images(args.split)
        window = datamodule.target_intensity
        if identity is None:
            identity = translation_metrics(source, target, None, window)
            lines.append(row("identity (MR read as CT)", "-", identity))
        pl.seed_everything(restored.cfg.seed)
        untrained = instantiate(restored.cfg.model, "model")
        minutes = (restored.run.info.end_time - restored.run.info.start_time) / 60000
        name = restored.cfg.model.name
        lines.append(row(f"{name}, untrained", "-", score(untrained, source, target, window)))
        lines.append(row(f"{name}, {restored.step} steps ({minutes:.1f} min)", f"`{restored.run.info.run_name}` "
                         f"({run_id[:8]})", score(restored.model, source, target, window)))
    print(f"{len(source)} {args.split} pairs, body mask = CT > -500 HU dilated by 2 px\n")
    print("| model | MLflow run | MAE (HU) ↓ | PSNR (dB) ↑ | SSIM ↑ |\n|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
