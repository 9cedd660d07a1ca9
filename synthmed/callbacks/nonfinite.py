"""`trainer.nonfinite=fail|skip`: what a NaN/Inf loss or gradient does to a run.

Checked in `on_before_optimizer_step`, after backward and before the weights move (also for the manual optimization
of GANs, where each optimizer's step passes through the same hook), so a bad step never reaches the weights:
- `fail`: raise `NonFiniteError` naming the step and the loss term; the run ends FAILED and the newest checkpoint
  holds the last finite weights;
- `skip`: drop the gradients (the optimizer leaves every parameter untouched), count the step in
  `train/skipped_steps`, and fail after `max_skips` skipped steps in a row.

Weights that turn non-finite in spite of finite gradients (an overflowing step) fail the run at the end of that
batch, and `on_save_checkpoint` refuses to write non-finite weights under any name (last.ckpt, on_exception.ckpt).

A finite but exploding loss (a DDPM at lr=1e8 reaches 3e20 without ever being NaN) is warned about, once per loss
term: a value above `spike_factor` times the median of its recent values names the step and the term.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque

import pytorch_lightning as pl
import torch

from synthmed.metrics import names

log = logging.getLogger(__name__)

POLICIES = ("fail", "skip")
SPIKE_WINDOW = 200  # recent finite values per loss term behind the running median
SPIKE_MIN_HISTORY = 10  # values needed before a median means something


class NonFiniteError(RuntimeError):
    """Training produced NaN/Inf: the message names the step, the loss term(s) or what else was non-finite."""


class NonFiniteGuard(pl.Callback):
    """Enforces the non-finite policy (see the module docstring).

    Args:
        policy: "fail" or "skip" (config key `trainer.nonfinite`).
        max_skips: with `skip`, fail after this many skipped steps in a row (`trainer.nonfinite_max_skips`).
        spike_factor: warn when a finite loss term exceeds this multiple of its running median (absolute values).
    """

    def __init__(self, policy: str = "fail", max_skips: int = 10, spike_factor: float = 1e6) -> None:
        if policy not in POLICIES:
            raise ValueError(f"trainer.nonfinite must be one of {POLICIES}, got {policy!r}")
        if max_skips < 1:
            raise ValueError(f"trainer.nonfinite_max_skips must be >= 1, got {max_skips}")
        self.policy, self.max_skips = policy, int(max_skips)
        self.skipped, self.in_a_row = 0, 0
        self._skipped_this_batch = False
        self.spike_factor = float(spike_factor)
        self._history: dict[str, deque] = {}
        self._warned: set[str] = set()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        terms = nonfinite_terms(trainer.callback_metrics)
        grads = nonfinite_grads(optimizer)
        if not terms and not grads:
            self.watch_spikes(loss_terms(trainer.callback_metrics), trainer.global_step)
            return
        what = describe(terms, grads, loss_terms(trainer.callback_metrics))
        if self.policy == "fail":
            raise NonFiniteError(f"non-finite training at step {trainer.global_step}: {what} (trainer.nonfinite="
                                 "fail; the newest checkpoint holds the last finite weights: resume=<run id> with a "
                                 "lower model.optimizer.lr, or set trainer.nonfinite=skip)")
        for group in optimizer.param_groups:  # `skip`: a parameter without a gradient is not updated
            for p in group["params"]:
                p.grad = None
        self._skipped_this_batch = True
        self._last_what = what

    def watch_spikes(self, terms: dict[str, float], step: int) -> None:
        """Warn (once per term) when a finite term exceeds `spike_factor` x the median of its recent values."""
        for key, value in terms.items():
            history = self._history.setdefault(key, deque(maxlen=SPIKE_WINDOW))
            if len(history) >= SPIKE_MIN_HISTORY and key not in self._warned:
                median = statistics.median(history)
                if median > 0 and abs(value) > self.spike_factor * median:
                    self._warned.add(key)
                    log.warning("%s = %.4g at step %d is %.3g x its running median %.4g (finite, but the run is "
                                "probably diverging: lower model.optimizer.lr); warned once per term", key, value,
                                step, abs(value) / median, median)
            history.append(abs(value))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self._skipped_this_batch:
            self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
        else:
            self.in_a_row = 0
        self._skipped_this_batch = False
        if self.policy == "skip":
            pl_module.log(names.SKIPPED_STEPS, float(self.skipped), on_step=True, on_epoch=False)
        if self.in_a_row >= self.max_skips:
            raise NonFiniteError(f"{self.in_a_row} non-finite steps in a row up to step {trainer.global_step} "
                                 f"(trainer.nonfinite_max_skips={self.max_skips}); last: {self._last_what}")
        bad = nonfinite_params(pl_module)
        if bad:
            raise NonFiniteError(f"non-finite weights after step {trainer.global_step}: {', '.join(bad[:5])} "
                                 "(the step overflowed; lower model.optimizer.lr)")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        bad = [k for k, v in checkpoint.get("state_dict", {}).items()
               if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteError(f"refusing to write a checkpoint with non-finite weights ({', '.join(bad[:5])}); "
                                 "the previous checkpoint stays the newest")

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped, self.in_a_row = int(state_dict["skipped"]), int(state_dict["in_a_row"])


def split_guard(trainer_cfg) -> tuple[NonFiniteGuard, dict]:
    """The guard from `trainer.nonfinite*` and the remaining `trainer` keys (for `pl.Trainer`)."""
    keys = ("nonfinite", "nonfinite_max_skips")
    guard = NonFiniteGuard(trainer_cfg.get(keys[0], "fail"), trainer_cfg.get(keys[1], 10))
    return guard, {k: v for k, v in trainer_cfg.items() if k not in keys}


def nonfinite_terms(metrics: dict) -> dict[str, float]:
    """The logged `train/*` values of this step that are NaN or Inf."""
    out = {}
    for key, value in metrics.items():
        v = float(value)
        if key.startswith("train/") and not math.isfinite(v):
            out[key] = v
    return out


def loss_terms(metrics: dict) -> dict[str, float]:
    """Every logged `train/*` value of this step (the context of a non-finite gradient)."""
    return {k: float(v) for k, v in metrics.items() if k.startswith("train/") and k != names.SKIPPED_STEPS}


def count_nonfinite(tensors: list[torch.Tensor]) -> int:
    """How many of `tensors` hold a NaN or Inf element, with one host sync per call instead of one per tensor.

    The max-norm (`ord=inf`) of each tensor, from one `torch._foreach_norm`, is NaN/Inf exactly when one of its
    elements is (a finite max cannot overflow, unlike the 2-norm); one `isfinite` reduction over those norms follows.
    """
    if not tensors:
        return 0
    norms = torch._foreach_norm(tensors, float("inf"))
    return int((~torch.isfinite(torch.stack([n.float() for n in norms]))).sum())


def nonfinite_grads(optimizer) -> int:
    """How many of the optimizer's parameters have a NaN/Inf gradient."""
    return count_nonfinite([p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None])


def nonfinite_params(module: torch.nn.Module) -> list[str]:
    """Names of the parameters holding NaN/Inf; the names are looked up only when the one-sync count finds some."""
    params = list(module.named_parameters())
    if not count_nonfinite([p.detach() for _, p in params]):
        return []
    return [n for n, p in params if not torch.isfinite(p).all()]


def describe(terms: dict[str, float], grads: int, context: dict[str, float]) -> str:
    """'train/loss = nan' for each non-finite term; for gradients, also the finite loss terms they came from."""
    parts = [f"{k} = {v}" for k, v in sorted(terms.items())]
    if grads:
        finite = ", ".join(f"{k} = {v:.4g}" for k, v in sorted(context.items()) if k not in terms)
        parts.append(f"{grads} parameter tensor(s) with NaN/Inf gradients" + (f" (from {finite})" if finite else ""))
    return "; ".join(parts)
