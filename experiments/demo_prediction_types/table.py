"""Results table of the demo's prediction types: for the DDPM run of each store, its final in-domain Frechet
distance and MS-SSIM diversity (metrics/final.json) with 95 % bootstrap intervals.

The intervals need the final evaluation's images: each run's model redraws the final samples with the recorded eval
seed, the scores are recomputed and checked against final.json (the same numbers, or the table is refused), then both
sets are resampled. `--step N` scores the run's local checkpoint of step N instead, by the same final evaluation.

    python experiments/demo_prediction_types/table.py /tmp/i12demo_epsilon /tmp/i12demo_v [--boot 200] [--step N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from synthmed.config import instantiate, register_resolvers
from synthmed.data.datamodule import covariates
from synthmed.evaluation.step import evaluate_generation
from synthmed.metrics import names
from synthmed.metrics.diversity import _distinct_pairs, ms_ssim_pairs
from synthmed.metrics.fid import fid_from_features
from synthmed.models.base import load_weights
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking.restore import restore_run
from synthmed.tracking.runinfo import artifact_text, recorded_config

LEVEL = 0.95


def percentile_interval(draws: list[float]) -> tuple[float, float]:
    low, high = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def fd_interval(fake: torch.Tensor, real: torch.Tensor, n_boot: int, seed: int) -> tuple[float, float]:
    """Bootstrap of the FD over images: features `[N, F]` of both sets resampled with replacement (as bootstrap_fid)."""
    gen = torch.Generator().manual_seed(seed)
    draws = [fid_from_features(fake[torch.randint(len(fake), (len(fake),), generator=gen)],
                               real[torch.randint(len(real), (len(real),), generator=gen)]) for _ in range(n_boot)]
    return percentile_interval(draws)


def pair_values(images: torch.Tensor, n_pairs: int, seed: int) -> torch.Tensor:
    """The per-pair MS-SSIM values `[n_pairs]` that ms_ssim_diversity averages (same pairs, same seed)."""
    i, j = _distinct_pairs(len(images), n_pairs, seed)
    return ms_ssim_pairs(images[i], images[j], data_range=2.0)


def diversity_interval(fake: torch.Tensor, real: torch.Tensor, n_boot: int, seed: int) -> tuple[float, float]:
    """Bootstrap over the scored pairs of generated - real MS-SSIM diversity (pairs share images: approximate)."""
    gen = torch.Generator().manual_seed(seed)
    draws = [float(fake[torch.randint(len(fake), (len(fake),), generator=gen)].mean()
                   - real[torch.randint(len(real), (len(real),), generator=gen)].mean()) for _ in range(n_boot)]
    return percentile_interval(draws)


def latest_run(root: Path):
    """The newest run of the store at `root` (a demo store holds one)."""
    client = MlflowClient(mt.tracking_uri(None, str(root)))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time DESC"])
    if not runs:
        raise SystemExit(f"{root}: no run in {root / 'mlflow.db'}")
    return client, runs[0]


def restore(client: MlflowClient, run, root: Path, step: int | None):
    """(config, model, recorded final metrics or None): the run's final checkpoint, or with `step` its local
    checkpoint `step_<step>.ckpt` from the training folder (a run still training, or an earlier state)."""
    if step is None:
        if run.info.status != "FINISHED":
            raise SystemExit(f"{run.info.run_id} in {root} is {run.info.status}: pass --step N for a local checkpoint")
        restored = restore_run(client, run.info.run_id, root / ".cache" / "runs")
        final = json.loads(artifact_text(client, run.info.run_id, "metrics/final.json"))
        return restored.cfg, restored.model, final
    cfg = recorded_config(client, run.info.run_id)
    found = sorted((root / "outputs").glob(f"**/checkpoints/step_*{step:07d}.ckpt"))  # Lightning: step_step=N
    if not found:
        raise SystemExit(f"{root}: no checkpoints/step_*{step:07d}.ckpt under {root / 'outputs'}")
    model = instantiate(cfg.model, "model")
    load_weights(model, found[-1])
    return cfg, model.eval(), None


def score_run(root: Path, n_boot: int, step: int | None) -> dict:
    """One store's run: its final metrics (recomputed and checked against final.json) or those of its checkpoint at
    `step`, with bootstrap intervals."""
    client, run = latest_run(root)
    cfg, model, final = restore(client, run, root, step)
    pl.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    suite = instantiate(cfg.metrics, "metrics").with_metrics(["ms_ssim_diversity", "fd_domain"])
    scored = evaluate_generation(model, datamodule, suite, cfg.eval.n_samples, cfg.eval.seed, cfg.eval.split,
                                 cfg.eval.get("n_real"))
    values = scored.result.values
    for key in (names.FD_DOMAIN, names.MS_SSIM_DIVERSITY, names.MS_SSIM_DIVERSITY_REAL) if final else ():
        if not np.isclose(final["metrics"][key], values[key], rtol=1e-3):
            raise SystemExit(f"{run.info.run_id}: {key} recomputed {values[key]:.6g}, final.json says "
                             f"{final['metrics'][key]:.6g}: the images behind the intervals are not the scored ones")
    out = scores(run.info.run_id, cfg.model.process.prediction_type, final["step"] if final else step, cfg, suite,
                 datamodule, scored.fake, values, n_boot)
    return out | {"status": run.info.status}


def real_reference(root: Path, n_boot: int) -> dict:
    """The same scores for held-out real images (the test split, as many as the runs generated) in place of
    samples: the floor a perfect generator would reach at this n."""
    client, run = latest_run(root)
    cfg = recorded_config(client, run.info.run_id)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    suite = instantiate(cfg.metrics, "metrics").with_metrics(["ms_ssim_diversity", "fd_domain"])
    held_out = datamodule.images("test", cfg.eval.n_samples)
    real = datamodule.images(cfg.eval.split, cfg.eval.get("n_real"))
    values = suite(held_out, real, train=datamodule.images("train"), train_cond=covariates(datamodule.split("train")),
                   fingerprint=datamodule.fingerprint).values
    ref = scores("real data (test split)", "-", "-", cfg, suite, datamodule, held_out, values, n_boot)
    return ref | {"status": "-", "seed": "-"}


def scores(run_id: str, prediction_type: str, step, cfg, suite, datamodule, fake, values: dict, n_boot: int) -> dict:
    """A table row's numbers: `values` of `fake` against the eval split, with bootstrap intervals."""
    real = datamodule.images(cfg.eval.split, cfg.eval.get("n_real"))
    # the suite's own encoder (same training images and covariate targets: loaded from the run's cache, not refitted)
    encoder = suite.encoders.get("domain", datamodule.images("train"), covariates(datamodule.split("train")),
                                 datamodule.fingerprint)
    feats = [encoder.outputs(x, suite.batch_size)["features"] for x in (fake, real)]
    n = min(len(fake), len(real))
    pairs = [pair_values(x[:n], suite.diversity_pairs, suite.seed) for x in (fake, real)]
    return {"run_id": run_id, "prediction_type": prediction_type, "steps": step, "seed": cfg.seed,
            "eval_seed": cfg.eval.seed, "n_fake": len(fake), "n_real": len(real), "n_pairs": suite.diversity_pairs,
            "metrics": values, "fd_ci": fd_interval(*feats, n_boot, seed=0),
            "div_diff_ci": diversity_interval(*pairs, n_boot, seed=0)}


def row(r: dict) -> str:
    m = r["metrics"]
    fd, (fd_lo, fd_hi) = m[names.FD_DOMAIN], r["fd_ci"]
    gen, real = m[names.MS_SSIM_DIVERSITY], m[names.MS_SSIM_DIVERSITY_REAL]
    lo, hi = r["div_diff_ci"]
    run = f"`{r['run_id']}`" if r["status"] != "-" else r["run_id"]
    return (f"| {r['prediction_type']} | {run} | {r['steps']} | {r['seed']} | {r['n_fake']} / {r['n_real']} "
            f"| {fd:.1f} [{fd_lo:.1f}, {fd_hi:.1f}] | {gen:.3f} | {real:.3f} | {gen - real:+.3f} [{lo:+.3f}, {hi:+.3f}] "
            f"| {r['status']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="paths.root of each demo run (holds mlflow.db)")
    parser.add_argument("--boot", type=int, default=200, help="bootstrap resamples per interval")
    parser.add_argument("--step", type=int, help="score the local checkpoint of this step instead of the final one")
    args = parser.parse_args()
    register_resolvers()
    rows = [score_run(root, args.boot, args.step) for root in args.roots] + [real_reference(args.roots[0], args.boot)]
    print("| prediction type | MLflow run | steps | seed | n generated / real | val/fd_domain [95 % CI] "
          "| MS-SSIM diversity, generated | real | generated - real [95 % CI] | run status |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(row(r) for r in rows))
    print(f"\nn pairs for MS-SSIM: {rows[0]['n_pairs']}; eval seed {rows[0]['eval_seed']}; {args.boot} bootstrap "
          f"resamples, {LEVEL:.0%} percentile intervals.")


if __name__ == "__main__":
    main()
