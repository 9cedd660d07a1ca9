"""trainer.nonfinite=fail|skip: a NaN loss stops the run at that step naming the term (fail) or leaves the weights
untouched and is counted (skip); no checkpoint ever holds NaN weights; metrics of NaN samples are NaN, not 0."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from mlflow.tracking import MlflowClient

from synthmed.callbacks.nonfinite import NonFiniteError, NonFiniteGuard, count_nonfinite
from synthmed.metrics import names
from synthmed.metrics.suite import MetricSuite
from synthmed.train import train
from tests.conftest import compose_train


class Poisoned(pl.LightningModule):
    """y = w x regression whose loss is NaN at the listed global steps (an injected divergence)."""

    def __init__(self, nan_steps=(), spike_steps=()):
        super().__init__()
        self.net = torch.nn.Linear(2, 1)
        self.nan_steps, self.spike_steps, self.weights_seen = set(nan_steps), set(spike_steps), {}

    def training_step(self, batch, batch_idx):
        self.weights_seen[self.global_step] = self.net.weight.detach().clone()
        loss = (self.net(batch[0]) - batch[1]).pow(2).mean()
        if self.global_step in self.nan_steps:
            loss = loss * float("nan")
        if self.global_step in self.spike_steps:  # a huge but finite value; the gradient stays the plain one
            loss = loss + 1e12 * loss.detach().clamp_min(1.0)
        self.log(names.TRAIN_LOSS, loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def fit(model, guard, tmp_path, steps=6):
    trainer = pl.Trainer(max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model)
    return trainer


def test_fail_names_the_step_and_the_term_before_the_weights_move(tmp_path):
    model = Poisoned(nan_steps={3})
    with pytest.raises(NonFiniteError, match=r"step 3: train/loss = nan"):
        fit(model, NonFiniteGuard("fail"), tmp_path)
    assert torch.equal(model.net.weight, model.weights_seen[3])  # step 3 never reached the weights
    assert torch.isfinite(model.net.weight).all()


def test_skip_leaves_weights_untouched_and_counts(tmp_path):
    model, guard = Poisoned(nan_steps={2, 4}), NonFiniteGuard("skip", max_skips=2)
    fit(model, guard, tmp_path, steps=6)
    assert guard.skipped == 2 and guard.in_a_row == 0
    seen = model.weights_seen
    assert torch.equal(seen[2], seen[3]) and torch.equal(seen[4], seen[5])  # skipped steps moved nothing
    assert not torch.equal(seen[1], seen[2])  # the finite ones did


def test_skip_fails_after_max_skips_in_a_row(tmp_path):
    with pytest.raises(NonFiniteError, match="2 non-finite steps in a row"):
        fit(Poisoned(nan_steps={1, 2, 3}), NonFiniteGuard("skip", max_skips=2), tmp_path)


def test_policy_is_checked():
    with pytest.raises(ValueError, match="trainer.nonfinite must be one of"):
        NonFiniteGuard("ignore")


def test_nan_samples_get_nan_metrics_never_zero():
    g = torch.Generator().manual_seed(0)
    train_set, real = torch.rand(16, 1, 16, 16, generator=g) * 2 - 1, torch.rand(8, 1, 16, 16, generator=g) * 2 - 1
    fake = torch.full((8, 1, 16, 16), float("nan"))
    result = MetricSuite(metrics=("ms_ssim_diversity", "memorization"))(fake, real, train=train_set)
    assert math.isnan(result.values[names.MEMORIZATION_RATE]) and math.isnan(result.values[names.MS_SSIM_DIVERSITY])
    assert result.tags["nonfinite"].startswith("8 of 8 samples")


@pytest.mark.slow  # ~20 s: a real VAE run through train()
def test_diverging_vae_run_ends_failed_with_finite_checkpoints(run_root):
    cfg = compose_train(run_root, ["model=vae", "debug=smoke", "model.optimizer.lr=1e30", "trainer.max_steps=6"])
    with pytest.raises(NonFiniteError, match=r"non-finite training at step \d+: .*train/loss"):
        train(cfg)
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FAILED"
    ckpts = sorted((run_root / "outputs").rglob("*.ckpt"))
    assert ckpts and not any(p.name == "final.ckpt" for p in ckpts)
    for path in ckpts:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path.name



def test_search_presets_let_a_failed_trial_not_stop_the_search(tmp_path):
    """hydra-optuna-sweeper tells Optuna FAIL for a job that raised, then stops the search when failures exceed
    max_failure_rate of a batch (default 0.0: the first diverged trial would end the search)."""
    from tests.test_hparams_search import SEARCHES, compose_with_hydra

    for search in SEARCHES:
        cfg = compose_with_hydra(tmp_path, [f"hparams_search={search}"])
        assert cfg.hydra.sweeper.max_failure_rate == 1.0, search


def test_one_sync_count_matches_a_per_tensor_isfinite_reference():
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(5, 3, generator=gen) for _ in range(12)]
    tensors[2][1, 1], tensors[5][0, 0], tensors[9][4, 2] = float("nan"), float("inf"), -float("inf")
    tensors[7] = tensors[7] * 3e37  # finite: its 2-norm would overflow float32, its max-norm cannot
    tensors.append(torch.full((4,), 6e4, dtype=torch.float16))  # fp16 near its max, finite
    tensors.append(torch.tensor([1.0, float("nan")], dtype=torch.bfloat16))
    reference = sum(int(not torch.isfinite(t).all()) for t in tensors)
    assert count_nonfinite(tensors) == reference == 4
    assert count_nonfinite([]) == 0


def test_a_finite_loss_spike_is_warned_once_with_its_step(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="synthmed.callbacks.nonfinite"):
        fit(Poisoned(spike_steps=(14, 15)), NonFiniteGuard("fail"), tmp_path, steps=16)
    spikes = [r.getMessage() for r in caplog.records if "running median" in r.getMessage()]
    assert len(spikes) == 1 and spikes[0].startswith(f"{names.TRAIN_LOSS} = ") and "at step 14" in spikes[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="synthmed.callbacks.nonfinite"):
        fit(Poisoned(), NonFiniteGuard("fail"), tmp_path, steps=16)  # a converging loss: no false alarm
    assert not [r for r in caplog.records if "running median" in r.getMessage()]
