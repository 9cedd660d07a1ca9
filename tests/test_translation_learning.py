"""Each translator learns MR -> CT on the phantom pairs: after a short CPU training its MAE in HU (body mask, val
split) is far below the identity mapping's (the MR read as CT) and the same model's before training.

An untrained translator outputs near-constant or noisy images (hundreds of HU off), and the identity mapping is
~270 HU off (skull, scalp and brain have other contrasts on MR), so the test cannot pass without learning. Tiny sizes
(32 px, small nets, a few hundred steps) keep each case around a minute on a shared CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from synthmed.config import instantiate
from synthmed.metrics import names
from synthmed.metrics.translation import translation_metrics
from tests.conftest import compose_train

pytestmark = pytest.mark.slow

DATA = ["dataset=phantom2d_pairs", "dataset.size=32", "dataset.datamodule.batch_size=16",
        "dataset.datamodule.dataset.n_train=256", "dataset.datamodule.dataset.n_val=32"]
# Small nets and a higher learning rate: what is tested is that the objective and the sampler learn the mapping.
SMALL = {
    "pix2pix": ["model.generator.features=[16,16,32,64,64,16]", "model.discriminator.channels=16",
                "model.optimizer.lr=1e-3", "model.optimizer_d.lr=1e-3", "model.ema_decay=0"],
    "cond_ddpm": ["model.net.channels=[16,32,32]", "model.net.norm_num_groups=8", "model.net.num_head_channels=16",
                  "model.process.num_inference_steps=10", "model.optimizer.lr=1e-3", "model.ema_decay=0"],
}
STEPS = {"pix2pix": 150, "cond_ddpm": 200}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run faster on one thread on a busy machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_name", ["pix2pix", "cond_ddpm"])
def test_translator_beats_identity_and_untrained_on_phantom_mae(tmp_path: Path, model_name):
    cfg = compose_train(tmp_path, [f"model={model_name}", *DATA, *SMALL[model_name]])
    pl.seed_everything(0)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    model = instantiate(cfg.model, "model")
    source, target, window = datamodule.sources("val"), datamodule.images("val"), datamodule.target_intensity
    assert window == {"kind": "linear", "native_min": -1000.0, "native_max": 1000.0, "unit": "HU"}

    def score() -> dict[str, float]:
        pred = model.sample(len(source), generator=torch.Generator().manual_seed(1), cond={"source": source})
        return translation_metrics(pred, target, source, window)

    before = score()
    pl.Trainer(max_steps=STEPS[model_name], accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
               default_root_dir=tmp_path).fit(model, datamodule=datamodule)
    after = score()
    identity = after[names.MAE_HU_IDENTITY]
    assert identity > 150.0, f"identity MAE {identity:.1f} HU: the phantom's MR and CT contrasts should differ"
    assert after[names.MAE_HU] < 0.5 * identity, f"trained {after[names.MAE_HU]:.1f} HU vs identity {identity:.1f}"
    assert after[names.MAE_HU] < 0.3 * before[names.MAE_HU], \
        f"trained {after[names.MAE_HU]:.1f} HU vs untrained {before[names.MAE_HU]:.1f}"
    assert after[names.SSIM_HU] > before[names.SSIM_HU] + 0.3 and after[names.PSNR_HU] > before[names.PSNR_HU] + 6
