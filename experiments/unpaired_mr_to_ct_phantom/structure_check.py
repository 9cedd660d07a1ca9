"""Is the structure term's higher lesion-appearance rate a bug or a real effect? Checks, on the held-out test pairs:

- what the term rewards: gradient correlation GC(MR, output) (synthmed/metrics/structure.py; the term is
  `lambda_structure * (2 - GC(a, G_AB(a)) - GC(b, G_BA(b)))`) for the real paired CT and for each run's output;
- what it transferred: the HU standard deviation inside the lesion-free brain (real CT's brain, eroded one pixel so
  no tissue boundary counts), the texture the CT lesion reader reacts to;
- the lesion-appeared rates of the runs on the same lesion-free inputs, Wilson 95 % intervals, and McNemar's exact
  test of the paired difference between the first two runs (statsmodels).

    python experiments/unpaired_mr_to_ct_phantom/structure_check.py --root /tmp/u2c --runs ID_STRUCTURE0 ID_STRUCTURE1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from statsmodels.stats.contingency_tables import mcnemar
from table import ct_reader, rate

from synthmed.config import instantiate, register_resolvers
from synthmed.metrics.lesions import BRAIN_WINDOW_HU, Rate, read_lesions
from synthmed.metrics.structure import gradient_correlation
from synthmed.metrics.translation import to_native
from synthmed.tracking import mlflow_utils as mt

BRAIN_HU = (-50.0, 100.0)  # HU; the phantom's parenchyma and CSF, between fat/air and bone


def brain_interior(ct_hu: torch.Tensor) -> torch.Tensor:
    """Bool `[N, 1, H, W]`: pixels of the real CT inside BRAIN_HU whose 3x3 neighbourhood is too (no boundary)."""
    inside = (ct_hu > BRAIN_HU[0]) & (ct_hu < BRAIN_HU[1])
    return F.max_pool2d((~inside).float(), 3, stride=1, padding=1) == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="paths.root of the runs (holds mlflow.db)")
    parser.add_argument("--runs", nargs="+", required=True, help="run ids; McNemar compares the first two")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    args = parser.parse_args()
    register_resolvers()
    client = MlflowClient(mt.tracking_uri(None, args.root))
    reader, restored = ct_reader(client, args.runs, Path(args.root))
    datamodule = instantiate(restored[0].cfg.dataset.datamodule, "dataset.datamodule")
    mr, ct, hu = datamodule.sources(args.split), datamodule.images(args.split), datamodule.target_intensity
    free = torch.as_tensor(datamodule.split(args.split).covariates()["label"]) == 0
    brain = brain_interior(to_native(ct, hu))
    outputs = {"real CT": ct}
    for run in restored:
        term = f", structure {run.cfg.model.lambda_structure:g}" if run.cfg.model.name == "cyclegan" else ", paired"
        label = f"{run.cfg.model.name}{term} ({run.run.info.run_id[:8]})"
        outputs[label] = run.model.sample(len(mr), generator=torch.Generator().manual_seed(0), cond={"source": mr})
    print(f"{len(mr)} {args.split} pairs, {int(free.sum())} lesion-free; brain interior {brain.sum((1, 2, 3)).float().mean():.0f}"
          " px per image\n\n| output | GC(MR, output), mean (sd) | HU std in lesion-free brain | lesion appeared |\n|---|---|---|---|")
    reads = {}
    for label, y in outputs.items():
        gc = gradient_correlation(mr, y)
        native = to_native(y, hu)
        texture = torch.stack([native[i][brain[i]].std() for i in range(len(y))])[free].mean()
        reads[label] = read_lesions(reader, y, hu, BRAIN_WINDOW_HU)[free]
        appeared = Rate(int(reads[label].sum()), int(free.sum()))
        print(f"| {label} | {gc.mean():.3f} ({gc.std():.3f}) | {texture:.1f} | {rate(appeared)} |")
    first, second = (reads[k] for k in list(reads)[1:3])
    table = [[int((first & second).sum()), int((first & ~second).sum())],
             [int((~first & second).sum()), int((~first & ~second).sum())]]
    print(f"\nMcNemar exact, first two runs on the same lesion-free inputs: discordant {table[0][1]} vs {table[1][0]}, "
          f"p = {mcnemar(table, exact=True).pvalue:.3g}")


if __name__ == "__main__":
    main()
