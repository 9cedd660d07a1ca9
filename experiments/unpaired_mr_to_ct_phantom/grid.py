"""The figure of the unpaired MR -> CT study: 6 lesion-free and 2 lesion test subjects (columns), rows = the real CT,
then each run's translation, all in the CT brain window [0, 80] HU the lesion reader reads through.

    python experiments/unpaired_mr_to_ct_phantom/grid.py --root /tmp/u2c --runs PIX2PIX_ID CYCLEGAN_ID ... --out FILE
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from synthmed.config import instantiate, register_resolvers
from synthmed.metrics.lesions import BRAIN_WINDOW_HU, reading_view
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking.restore import restore_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    register_resolvers()
    client = MlflowClient(mt.tracking_uri(None, args.root))
    runs = [restore_run(client, r, Path(args.root) / ".cache" / "runs") for r in args.runs]
    datamodule = instantiate(runs[0].cfg.dataset.datamodule, "dataset.datamodule")
    source, target = datamodule.sources("test"), datamodule.images("test")
    labels = torch.as_tensor(datamodule.split("test").covariates()["label"])
    idx = torch.cat([torch.nonzero(labels == 0)[:6, 0], torch.nonzero(labels == 1)[:2, 0]])
    rows = [target[idx]] + [r.model.sample(len(idx), generator=torch.Generator().manual_seed(0),
                                           cond={"source": source[idx]}) for r in runs]
    view = [reading_view(r, datamodule.target_intensity, BRAIN_WINDOW_HU)[:, 0] for r in rows]
    grid = torch.cat([torch.cat(list(v), 1) for v in view], 0)
    image = Image.fromarray(((grid + 1) * 127.5).clamp(0, 255).byte().numpy())
    image.resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(args.out)


if __name__ == "__main__":
    main()
