"""Training-loop overhead: synthmed (Lightning + MLflow logging) vs a plain PyTorch loop, side by side.

Both loops train the same DDPM network (conf/model/ddpm.yaml) from the same initial weights on the same phantom
batches (64x64, batch 16) and do the same work per step: diffusion loss, backward, gradient-norm clipping, AdamW,
EMA update. Only the framework around it differs. Runs alternate (plain, synthmed, plain, synthmed, ...) so that
machine-load drift hits both; the first steps of every run are warm-up and not timed.

    python benchmarks/overhead.py [--steps 40] [--warmup 5] [--repeats 2] [--size 64] [--batch 16]

Target: synthmed within 5 percent of the plain loop (ratio >= 0.95).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch.optim.swa_utils import AveragedModel

from synthmed.config import CONF_DIR, instantiate, register_resolvers
from synthmed.models.base import ema_multi_avg_fn
from synthmed.tracking.mlflow_utils import artifact_location, lightning_logger_config, open_run


class StepTimer(pl.Callback):
    """Wall time from the end of the warm-up steps to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def compose_cfg(root: Path, size: int, batch: int, steps: int):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[
            f"paths.root={root}", f"paths.output_dir={root}/out", f"dataset.size={size}",
            f"dataset.datamodule.batch_size={batch}", f"trainer.max_steps={steps}",
            "dataset.datamodule.dataset.n_train=256", "dataset.datamodule.dataset.n_val=16"])


def plain_loop(model, loader, steps: int, warmup: int) -> float:
    """What a researcher would write by hand: returns timed steps per second."""
    net, process = model.net, model.process
    ema = AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(model.ema_decay), use_buffers=True)
    opt = model.optimizer_factory(net.parameters())
    net.train()
    step, start, batches = 0, None, iter(loader)
    while step < steps:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        loss = process.loss(net, batch["image"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), model.grad_clip_norm)
        opt.step()
        ema.update_parameters(net)
        step += 1
        if step == warmup:
            start = time.perf_counter()
    return (steps - warmup) / (time.perf_counter() - start)


def bench_logger(cfg, root: Path, run_name: str):
    """The MLflow logger as `synthmed train` builds it, on a sqlite store under `root`."""
    uri = f"sqlite:///{root}/mlflow.db"
    return open_run(instantiate(lightning_logger_config(cfg.logger), "logger", tracking_uri=uri,
                                artifact_location=artifact_location(uri, root), run_name=run_name))


def synthmed_loop(cfg, model, datamodule, steps: int, warmup: int, root: Path) -> float:
    """The Trainer and MLflow logger exactly as `synthmed train` builds them (no periodic evaluation)."""
    logger = bench_logger(cfg, root, "overhead-bench")
    timer = StepTimer(warmup)
    trainer = pl.Trainer(max_steps=steps, logger=logger, callbacks=[timer], limit_val_batches=0,
                         log_every_n_steps=cfg.trainer.log_every_n_steps, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=root, **cfg.hardware)
    trainer.fit(model, datamodule=datamodule)
    return (steps - warmup) / (timer.end - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    register_resolvers()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = compose_cfg(root, args.size, args.batch, args.steps)
        pl.seed_everything(0)
        datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
        reference = instantiate(cfg.model, "model")
        plain, ours = [], []
        for r in range(args.repeats):
            pl.seed_everything(r)
            plain.append(plain_loop(copy.deepcopy(reference), datamodule.train_dataloader(), args.steps, args.warmup))
            pl.seed_everything(r)
            ours.append(synthmed_loop(cfg, copy.deepcopy(reference), datamodule, args.steps, args.warmup, root))
            print(f"repeat {r}: plain {plain[-1]:.3f} steps/s, synthmed {ours[-1]:.3f} steps/s", flush=True)
    p, s = statistics.median(plain), statistics.median(ours)
    print(f"\n{args.size}x{args.size}, batch {args.batch}, {args.steps - args.warmup} timed steps x {args.repeats}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"plain PyTorch loop : {p:.3f} steps/s")
    print(f"synthmed (Lightning + MLflow): {s:.3f} steps/s")
    print(f"ratio synthmed/plain: {s / p:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
