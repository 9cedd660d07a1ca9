"""Result table of the study, with two fidelity statistics computed here, independently of synthmed's metric suite.

Without the Inception weights FID/KID/precision/recall are skipped, and `val/ms_ssim_diversity` alone cannot tell
a varied, realistic model from one that draws varied noise. So every finished run of the experiment is rebuilt from
its recorded config and final checkpoint (weights only), sampled exactly as the final evaluation (`eval.n_samples`
with `eval.seed`), and compared with the validation split by

- W1: the 1-Wasserstein distance between the pixel-intensity distributions (tissue contrast, background), and
- mean RMS: the RMS difference of the mean sample and the mean real image (head size, position, brightness);

both 0 for a perfect model. A "real" row scores the training split against the validation split: the floor.

    python experiments/gan_vs_diffusion_phantom/fidelity.py /tmp/gvd [gan_vs_diffusion]
"""

from __future__ import annotations

import sys
import tempfile

import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from scipy.stats import wasserstein_distance

from synthmed.config import instantiate, register_resolvers
from synthmed.metrics import names
from synthmed.metrics.diversity import ms_ssim_diversity
from synthmed.models.base import load_weights
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk

FAMILY_ORDER = ("gan", "vae", "ddpm", "ldm")


def fidelity(fake: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    w1 = wasserstein_distance(fake.flatten().numpy(), real.flatten().numpy())
    return float(w1), (fake.mean(0) - real.mean(0)).pow(2).mean().sqrt().item()


def rebuild(client: MlflowClient, run_id: str, tmp: str):
    """(config, model with final weights, datamodule) of a run, from its recorded config and checkpoint."""
    cfg = OmegaConf.load(client.download_artifacts(run_id, "config/config.yaml", tmp))
    model = instantiate(cfg.model, "model")
    load_weights(model, client.download_artifacts(run_id, "checkpoints/final.ckpt", tmp))
    return cfg, model.eval(), instantiate(cfg.dataset.datamodule, "dataset.datamodule")


def main(root: str, experiment: str = "gan_vs_diffusion") -> None:
    register_resolvers()
    torch.set_num_threads(1)
    client = MlflowClient(mt.tracking_uri(None, root))
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
            if r.data.tags.get(tk.MODEL) in FAMILY_ORDER]
    runs.sort(key=lambda r: FAMILY_ORDER.index(r.data.tags[tk.MODEL]))
    print("| model | run name | run id | train+eval min | val/ms_ssim_diversity | val/memorization_rate "
          "| W1 intensity | mean-image RMS |")
    print("|---|---|---|---|---|---|---|---|")
    real = None
    for run in runs:
        with tempfile.TemporaryDirectory() as tmp:
            cfg, model, datamodule = rebuild(client, run.info.run_id, tmp)
            real = datamodule.images(cfg.eval.split, cfg.eval.n_real)
            fake = model.sample(cfg.eval.n_samples, generator=torch.Generator().manual_seed(cfg.eval.seed))
        m = run.data.metrics
        minutes = (run.info.end_time - run.info.start_time) / 60000
        w1, rms = fidelity(fake, real)
        print(f"| {run.data.tags[tk.MODEL]} | {run.info.run_name} | `{run.info.run_id}` | {minutes:.1f} "
              f"| {m.get(names.MS_SSIM_DIVERSITY, float('nan')):.3f} "
              f"| {m.get(names.MEMORIZATION_RATE, float('nan')):.3f} | {w1:.4f} | {rms:.4f} |")
    if real is not None:
        train = datamodule.images("train", len(real))
        w1, rms = fidelity(train, real)
        print(f"| real (train vs val) | | | | {ms_ssim_diversity(real)[0]:.3f} | | {w1:.4f} | {rms:.4f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
