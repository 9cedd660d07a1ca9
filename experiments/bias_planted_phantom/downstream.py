"""Per-case predictions of a lesion classifier trained on real data and on real + synthetic data (layer 3 input).

A stand-in for `synthmed utility` (issue 14) until it lands: it writes the same `predictions.csv` columns
(regime, seed, real_fraction, case, y_true, score, sex, age) that `synthmed bias ... predictions=FILE` reads.
The classifier is synthmed's in-domain lesion reader (metrics/domain.py, role "label": a DomainEncoder with
full-resolution first stage, class-balanced draws, flips/turns/shifts), trained once per regime and seed. The
synthetic images come from the trained label- and covariate-conditioned generator, asked for every (sex, label)
cell equally often, ages drawn from training subjects of that cell.

    python experiments/bias_planted_phantom/downstream.py --root /tmp/bpp --run <run id> --out /tmp/bpp/predictions.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from synthmed.config import instantiate
from synthmed.data.datamodule import covariates
from synthmed.io import atomic_write
from synthmed.metrics.domain import EncoderSettings, fit_encoder
from synthmed.tracking.restore import restore_run


def balanced_cells(train_cond: dict[str, torch.Tensor], n: int, seed: int) -> dict[str, torch.Tensor]:
    """Requests for ``n`` samples, every (sex, label) cell n/4 times; each request copies a training subject of
    its cell (so ages follow that cell's training ages)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for sex in (0, 1):
        for label in (0, 1):
            pool = ((train_cond["sex"] == sex) & (train_cond["label"] == label)).nonzero()[:, 0]
            rows.append(pool[torch.randint(len(pool), (n // 4,), generator=gen)])
    rows = torch.cat(rows)
    return {k: torch.as_tensor(v)[rows] for k, v in train_cond.items()}


@torch.no_grad()
def lesion_scores(model, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """P(lesion) ``[N]`` of images ``[N, C, H, W]`` from the classifier's label head."""
    model.net.eval()
    logits = torch.cat([model.net(images[i:i + batch_size])["label"] for i in range(0, len(images), batch_size)])
    return torch.softmax(logits.double(), 1)[:, 1].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="paths.root of the trained run's store")
    ap.add_argument("--run", required=True, help="run id or config-hash prefix of the trained conditional generator")
    ap.add_argument("--out", required=True, help="predictions.csv to write")
    ap.add_argument("--seeds", type=int, default=3, help="classifier seeds per regime")
    ap.add_argument("--steps", type=int, default=300, help="classifier optimizer steps")
    ap.add_argument("--n-synth", type=int, default=512, help="synthetic images added (a multiple of 4)")
    args = ap.parse_args()
    client = MlflowClient(f"sqlite:///{Path(args.root).resolve()}/mlflow.db")
    restored = restore_run(client, args.run, Path(args.root) / ".cache" / "runs")
    datamodule = instantiate(restored.cfg.dataset.datamodule, "dataset.datamodule")
    train, test = datamodule.images("train"), datamodule.images("test")
    train_cond, test_cond = covariates(datamodule.split("train")), covariates(datamodule.split("test"))
    request = balanced_cells(train_cond, args.n_synth, seed=0)
    cond = {k: request[k] for k in restored.model.conditioning.keys}
    synth = restored.model.sample(args.n_synth, generator=torch.Generator().manual_seed(0), cond=cond).cpu()
    regimes = {"real": (train, train_cond["label"]),
               "real+synth": (torch.cat([train, synth]), torch.cat([train_cond["label"], request["label"]]))}
    rows = []
    for regime, (images, labels) in regimes.items():
        for seed in range(args.seeds):
            clf = fit_encoder(images, {"label": labels}, EncoderSettings(steps=args.steps, seed=seed), role="label")
            rows.append(pd.DataFrame({"regime": regime, "seed": seed, "real_fraction": 1.0,
                                      "case": np.arange(len(test)), "y_true": test_cond["label"].numpy(),
                                      "score": lesion_scores(clf, test), "sex": test_cond["sex"].numpy(),
                                      "age": test_cond["age"].numpy()}))
            print(f"{regime} seed {seed}: done", flush=True)
    atomic_write(args.out, pd.concat(rows).to_csv(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
