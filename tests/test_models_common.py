"""Mixed precision and EMA are config switches that work for every family (no per-family code)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from tests.test_contract import FAST, MODELS, build, prerequisites


@pytest.mark.parametrize("model_name", MODELS)
def test_bf16_mixed_precision_and_ema_from_config(tmp_path, model_name):
    stages = prerequisites(tmp_path, model_name, "phantom2d")
    _, datamodule, model = build(tmp_path, model_name, "phantom2d", [*stages, *FAST.get(model_name, []),
                                                                      "model.ema_decay=0.9"])
    assert model.ema is not None
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 2
    assert all(torch.isfinite(v).all() for v in trainer.callback_metrics.values())
    trained = model._ema_source[0]
    # The EMA copy followed training but lags it: it is neither the initial nor the current weights.
    assert int(model.ema.n_averaged) == 2
    assert any(not torch.equal(e, p) for e, p in zip(model.ema.module.parameters(), trained.parameters()))
    x = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
