"""Logging overhead of a training step: MLflow tracking server (PostgreSQL) vs local sqlite vs no logger, in one run.

The same DDPM network is trained from the same initial weights on the same phantom batches three ways, alternating
(none, sqlite, server, none, ...) so that machine-load drift hits all three: Lightning with no logger, with
synthmed's MLflow logger on `sqlite:///<tmp>/mlflow.db`, and with it on an `mlflow server` over PostgreSQL started
here exactly as `synthmed server` starts it (or `--uri` of a running one). Every step logs its loss
(`trainer.log_every_n_steps=1`, the worst case; the default config logs every 10 steps). Prints steps/s and the
ratios to the run without a logger.

    python benchmarks/tracking.py [--steps 30] [--warmup 5] [--repeats 2] [--size 32] [--batch 8] [--uri URI]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from overhead import StepTimer, compose_cfg

from synthmed import server as srv
from synthmed.config import instantiate, register_resolvers
from synthmed.tracking.mlflow_utils import artifact_location, lightning_logger_config, open_run


def make_logger(cfg, uri: str | None, root: Path):
    """None, or the MLflow logger as `synthmed train` builds it on `uri`."""
    if uri is None:
        return False
    return open_run(instantiate(lightning_logger_config(cfg.logger), "logger", tracking_uri=uri,
                                artifact_location=artifact_location(uri, root), run_name="tracking-bench"))


def steps_per_s(cfg, model, datamodule, steps: int, warmup: int, uri: str | None, root: Path) -> float:
    timer = StepTimer(warmup)
    trainer = pl.Trainer(max_steps=steps, logger=make_logger(cfg, uri, root), callbacks=[timer], limit_val_batches=0,
                         log_every_n_steps=1, enable_model_summary=False, enable_checkpointing=False,
                         enable_progress_bar=False, default_root_dir=root, **cfg.hardware)
    trainer.fit(model, datamodule=datamodule)
    return (steps - warmup) / (timer.end - timer.start)


def start_server(root: Path):
    """PostgreSQL + `mlflow server` under `root`, as `synthmed server` runs them; returns (uri, stop)."""
    root.mkdir(parents=True, exist_ok=True)
    for folder in (root.parent, root):  # PostgreSQL's own user (when run as root) must enter them
        folder.chmod(0o755)
    data = root / "postgres" / "data"
    cluster = srv.Cluster(str(data), srv.free_port(), str(root / "postgres.password"), srv.cluster_owner(data))
    cluster.init()
    cluster.start()
    env = {**os.environ, "PGPASSWORD": cluster.password()}
    server = srv.MlflowServer(cluster.url("mlflow"), str(root / "mlartifacts"), srv.free_port(),
                              str(root / "mlflow.log"))
    server.start(env)
    return server.uri, lambda: (server.stop(), cluster.stop())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--uri", default=None, help="a running tracking server (default: start one here)")
    args = parser.parse_args()
    register_resolvers()
    tmp = Path(tempfile.mkdtemp(prefix="synthmed-bench-"))
    uri, stop = (args.uri, lambda: None) if args.uri else start_server(tmp / "server")
    try:
        cfg = compose_cfg(tmp, args.size, args.batch, args.steps)
        pl.seed_everything(0)
        datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
        reference = instantiate(cfg.model, "model")
        stores = {"no logger": None, "sqlite": f"sqlite:///{tmp}/mlflow.db", "server": uri}
        rates: dict[str, list[float]] = {name: [] for name in stores}
        for r in range(args.repeats):
            for name, store in stores.items():
                pl.seed_everything(r)
                rates[name].append(steps_per_s(cfg, copy.deepcopy(reference), datamodule, args.steps, args.warmup,
                                               store, tmp))
            print(f"repeat {r}: " + ", ".join(f"{n} {v[-1]:.3f} steps/s" for n, v in rates.items()), flush=True)
    finally:
        stop()
        shutil.rmtree(tmp, ignore_errors=True)
    median = {name: statistics.median(v) for name, v in rates.items()}
    print(f"\n{args.size}x{args.size}, batch {args.batch}, {args.steps - args.warmup} timed steps x {args.repeats}, "
          f"a metric logged every step, torch threads {torch.get_num_threads()}")
    for name, value in median.items():
        print(f"{name:<10}: {value:.3f} steps/s   ratio to no logger {value / median['no logger']:.3f}")
    print(f"server / sqlite: {median['server'] / median['sqlite']:.3f}")


if __name__ == "__main__":
    main()
