"""Results table of the unpaired MR -> CT phantom study: every finished pix2pix / cyclegan run of an MLflow store and
the identity mapping, on the same held-out paired split: MAE in HU inside the body mask, edge SSIM of input vs output,
and the lesion preserved / appeared rates read by a CT-domain lesion reader (with n and Wilson 95 % intervals).

    python experiments/unpaired_mr_to_ct_phantom/table.py --root /tmp/u2c [--split test] [--runs ID ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from synthmed.config import instantiate, register_resolvers
from synthmed.metrics import names
from synthmed.metrics.domain import EncoderBank, EncoderSettings
from synthmed.metrics.lesions import BRAIN_WINDOW_HU, LesionRates, Rate, lesion_rates, lesion_reader
from synthmed.metrics.structure import edge_ssim
from synthmed.metrics.translation import translation_metrics
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.restore import restore_run

TRANSLATORS = ("pix2pix", "cyclegan")
READER = EncoderSettings(steps=300)  # the CT lesion reader: on val phantoms 9/10 lesions read, 1/86 false alarms


def smooth(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean filter `[N, C, H, W]` (edges replicated): real CT without most of its noise, a control for how the
    reader reacts to the smoother texture of translations."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def rate(r: Rate) -> str:
    low, high = r.ci
    return f"{r.value:.2f} ({r.k}/{r.n}; {low:.2f}-{high:.2f})"


def row(label: str, run: str, mae: str, edges: str, lesions: LesionRates | None) -> str:
    les = f"{rate(lesions.preserved)} | {rate(lesions.appeared)}" if lesions else "- | -"
    return f"| {label} | {run} | {mae} | {edges} | {les} |"


def ct_reader(client: MlflowClient, runs: list[str], root: Path):
    """The lesion reader of the CT domain: trained on the train-split CTs (and their labels) of the first cyclegan
    run's data set (40 % lesions), else of the first run's."""
    restored = [restore_run(client, r, root / ".cache" / "runs") for r in runs]
    chosen = next((r for r in restored if r.cfg.model.name == "cyclegan"), restored[0])
    train = instantiate(chosen.cfg.dataset.datamodule, "dataset.datamodule").split("train")
    bank = EncoderBank(READER, root / ".cache")
    return lesion_reader(bank, train.target, torch.as_tensor(train.target_labels()), train.target_intensity,
                         BRAIN_WINDOW_HU), restored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="paths.root of the runs (holds mlflow.db)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--runs", nargs="*", help="run ids (default: every finished pix2pix/cyclegan run)")
    args = parser.parse_args()
    register_resolvers()
    root = Path(args.root)
    client = MlflowClient(mt.tracking_uri(None, args.root))
    runs = args.runs or [r.info.run_id for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"]) if r.data.tags.get(tk.MODEL) in TRANSLATORS]
    reader, restored = ct_reader(client, runs, root)
    datamodule = instantiate(restored[0].cfg.dataset.datamodule, "dataset.datamodule")
    source, target, hu = datamodule.sources(args.split), datamodule.images(args.split), datamodule.target_intensity
    labels = torch.as_tensor(datamodule.split(args.split).covariates()["label"])
    identity = translation_metrics(source, target, None, hu)
    lines = [row("real CT (the reader's own rates)", "-", "0", "-", lesion_rates(reader, target, labels, hu,
                                                                                  BRAIN_WINDOW_HU)),
             row("real CT, 3x3 mean filter (control)", "-",
                 f"{translation_metrics(smooth(target), target, None, hu)[names.MAE_HU]:.1f}",
                 f"{float(edge_ssim(target, smooth(target)).mean()):.3f}",
                 lesion_rates(reader, smooth(target), labels, hu, BRAIN_WINDOW_HU)),
             row("identity (MR read as CT)", "-", f"{identity[names.MAE_HU]:.1f}",
                 f"{float(edge_ssim(source, source).mean()):.3f}", None)]
    for run in restored:
        same = instantiate(run.cfg.dataset.datamodule, "dataset.datamodule")
        if not torch.equal(same.sources(args.split), source):
            raise ValueError(f"run {run.run.info.run_id}: its {args.split} split differs from the first run's")
        pred = run.model.sample(len(source), generator=torch.Generator().manual_seed(0), cond={"source": source})
        mae = translation_metrics(pred, target, None, hu)[names.MAE_HU]
        cfg = run.cfg.model
        label = f"{cfg.name}" + (f", structure term {cfg.lambda_structure:g}" if cfg.name == "cyclegan" else ", paired")
        minutes = (run.run.info.end_time - run.run.info.start_time) / 60000
        lines.append(row(f"{label}, {run.step} steps ({minutes:.1f} min)",
                         f"`{run.run.info.run_name}` ({run.run.info.run_id[:8]})", f"{mae:.1f}",
                         f"{float(edge_ssim(source, pred).mean()):.3f}",
                         lesion_rates(reader, pred, labels, hu, BRAIN_WINDOW_HU)))
    print(f"{len(source)} {args.split} pairs ({int(labels.sum())} with lesions); MAE in the body mask (CT > -500 HU, "
          f"dilated 2 px); lesion rates read by the CT reader through the brain window {list(BRAIN_WINDOW_HU)} HU: "
          "rate (k/n; Wilson 95 % CI)\n")
    print("| model | MLflow run | MAE (HU) ↓ | edge SSIM ↑ | lesion preserved ↑ | lesion appeared ↓ |\n"
          "|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
