"""Mixed precision and EMA are config switches that work for every family (no per-family code)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from synthmed.evaluation.step import source_request
from tests.test_contract import MODELS, build, prerequisites


def fit_mixed(tmp_path, model_name: str, accelerator: str, steps: int = 2):
    """A family with EMA on, fitted `steps` steps in bf16-mixed on `accelerator`; returns the model, its data
    and the trained network's weights before training."""
    stages = prerequisites(tmp_path, model_name, "phantom2d")
    _, datamodule, model = build(tmp_path, model_name, "phantom2d", [*stages, "model.ema_decay=0.9"])
    assert model.ema is not None
    trained = model._ema_source[0]
    initial = [p.detach().clone() for p in trained.parameters()]
    trainer = pl.Trainer(max_steps=steps, accelerator=accelerator, devices=1, precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == steps
    assert all(torch.isfinite(v).all() for v in trainer.callback_metrics.values())
    return model, datamodule, initial


def assert_ema_lags_training(model, initial: list[torch.Tensor], updates: int) -> None:
    """The EMA copy followed training but lags it: it is neither the initial nor the current weights."""
    trained = model._ema_source[0]
    assert int(model.ema.n_averaged) == updates
    ema = [e.detach().cpu() for e in model.ema.module.parameters()]
    assert any(not torch.equal(e, p.detach().cpu()) for e, p in zip(ema, trained.parameters())), "EMA = current"
    assert any(not torch.equal(e, p.cpu()) for e, p in zip(ema, initial)), "EMA = initial: it never followed"


@pytest.mark.parametrize("model_name", MODELS)
def test_bf16_mixed_precision_and_ema_from_config(tmp_path, model_name):
    model, datamodule, initial = fit_mixed(tmp_path, model_name, "cpu")
    assert_ema_lags_training(model, initial, updates=2)
    x = model.sample(2, generator=torch.Generator().manual_seed(0), cond=source_request(model, datamodule, 2))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


@pytest.mark.gpu
def test_bf16_mixed_training_on_a_cuda_device(tmp_path):
    # The GPU path the CPU suite cannot reach: bf16 autocast on CUDA, EMA on the device, samples back in fp32.
    model, datamodule, initial = fit_mixed(tmp_path, "ddpm", "gpu", steps=3)
    assert next(model.parameters()).is_cuda
    assert_ema_lags_training(model, initial, updates=3)
    x = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
