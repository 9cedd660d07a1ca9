"""Every family learns the phantom data: after a short CPU training its samples are much closer to real images than
the same model's samples before training, by statistics computed here (not by synthmed's metric code):

- the 1-Wasserstein distance between the pixel-intensity distributions of samples and real images, and
- the RMS difference between the mean sample and the mean real image (where the head is, how bright).

The trained value must be below half the untrained one for both. An untrained model is far off on both (flat grey,
noise or saturated images), so the tests cannot pass without learning. Sizes are tiny (16 px, small nets, 100-240
steps): 20-40 s each on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from scipy.stats import wasserstein_distance

from synthmed.config import instantiate
from synthmed.tracking.first_stage import build_model
from tests.conftest import compose_train, save_run_folder

pytestmark = pytest.mark.slow

DATA = ["dataset=phantom2d", "dataset.size=16", "dataset.datamodule.batch_size=16",
        "dataset.datamodule.dataset.n_train=256", "dataset.datamodule.dataset.n_val=64"]
# Small nets: fast on a CPU; what is tested is that the family's objective and sampler learn, not capacity.
SMALL = {
    "gan": ["model.generator.channels=[64,32]", "model.discriminator.channels=[16,32,64]"],
    "vae": ["model.autoencoder.channels=[16,32,32]", "model.autoencoder.norm_num_groups=8"],
    "ddpm": ["model.net.channels=[16,32,32]", "model.net.norm_num_groups=8", "model.net.num_head_channels=16",
             "model.process.num_inference_steps=20", "model.optimizer.lr=1e-3"],
    "ldm": ["model.net.channels=[32,32]", "model.net.norm_num_groups=8", "model.net.num_head_channels=16",
            "model.process.num_inference_steps=20", "model.optimizer.lr=1e-3"],
}
N_SAMPLES, MARGIN = 64, 0.5  # trained distance must be below MARGIN x the untrained one


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run faster on one thread (OpenMP synchronisation dominates them), much faster on a busy
    machine; restored afterwards so no other test is affected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def distances(fake: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    """(pixel-intensity Wasserstein-1, RMS of the mean-image difference) between two `[N, C, H, W]` sets."""
    w1 = wasserstein_distance(fake.flatten().numpy(), real.flatten().numpy())
    mean_err = (fake.mean(0) - real.mean(0)).pow(2).mean().sqrt().item()
    return float(w1), mean_err


def train(root: Path, model: str, steps: int, extra: list[str] = ()):
    """Build `model` on the tiny phantoms, score its samples before and after `steps` steps.

    Returns:
        (distances before, distances after, trainer, composed config).
    """
    cfg = compose_train(root, [f"model={model}", *DATA, *SMALL[model], *extra])
    pl.seed_everything(0)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    module = build_model(cfg)[0]  # as synthmed train builds it (an ldm's first stage resolved and loaded)
    real = datamodule.images("val")
    before = distances(module.sample(N_SAMPLES, generator=torch.Generator().manual_seed(1)), real)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=root)
    trainer.fit(module, datamodule=datamodule)
    after = distances(module.sample(N_SAMPLES, generator=torch.Generator().manual_seed(1)), real)
    return before, after, trainer, cfg


def assert_learned(before: tuple[float, float], after: tuple[float, float]) -> None:
    for name, b, a in zip(("intensity W1", "mean-image RMS"), before, after):
        assert a < MARGIN * b, f"{name}: trained {a:.4f} is not below {MARGIN} x untrained {b:.4f}"


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    """A VAE trained on the tiny phantoms, saved as a run folder (checkpoint + config) for the LDM test."""
    root = tmp_path_factory.mktemp("vae")
    before, after, trainer, cfg = train(root, "vae", steps=120)
    return before, after, save_run_folder(root, cfg, trainer)


def test_gan_learns(tmp_path):
    before, after, _, _ = train(tmp_path, "gan", steps=100)
    assert_learned(before, after)


def test_vae_learns(trained_vae):
    before, after, _ = trained_vae
    assert_learned(before, after)


# DDIM with v-prediction and rectified flow: both noise-process kinds. (Epsilon prediction, the default, needs
# several times more steps before its last denoising steps are clean; the phantom experiment covers it.)
@pytest.mark.parametrize("process", [["model.process.prediction_type=v_prediction"], ["model/process=rflow"]],
                         ids=["ddim_v", "rflow"])
def test_ddpm_learns(tmp_path, process):
    before, after, _, _ = train(tmp_path, "ddpm", steps=120, extra=process)
    assert_learned(before, after)


def test_ldm_learns(tmp_path, trained_vae):
    # "Untrained" is the LDM with the trained VAE and a fresh denoiser: only the diffusion stage is credited.
    before, after, trainer, _ = train(tmp_path, "ldm", steps=240, extra=[f"model.autoencoder='{trained_vae[2]}'"])
    assert trainer.lightning_module.latent_scale_estimated
    assert_learned(before, after)
