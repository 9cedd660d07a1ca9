"""Conditional generation: encoding of labels/covariates, classifier-free guidance, conditional DDPM."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from synthmed.config import instantiate
from synthmed.models.conditioning import NULL_FILL, Conditioning, guided
from tests.conftest import compose_train
from tests.test_contract import fit

RANGES = {"age": [20, 90], "sex": [0, 1]}


def test_encoding_one_hot_and_scaled_covariates():
    c = Conditioning("both", 2, RANGES)
    ctx = c.encode({"label": torch.tensor([0, 1]), "age": torch.tensor([20.0, 55.0]), "sex": torch.tensor([1.0, 0.0])})
    assert ctx.shape == (2, 1, 4) and c.dim == 4
    torch.testing.assert_close(ctx[:, 0], torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.5, 0.0]]))
    assert (c.null(3) == NULL_FILL).all() and c.null(3).shape == (3, 1, 4)
    assert not (ctx == NULL_FILL).all(dim=-1).any()  # no real condition equals the null one


def test_encoding_errors_name_what_is_missing():
    c = Conditioning("attrs", 2, RANGES)
    with pytest.raises(KeyError, match="sex"):
        c.encode({"age": torch.tensor([30.0])})
    with pytest.raises(ValueError, match="label must be in"):
        Conditioning("label").encode({"label": torch.tensor([2])})
    with pytest.raises(ValueError, match="cond must be one of"):
        Conditioning("colour")
    with pytest.raises(ValueError, match="needs attr_ranges"):
        Conditioning("attrs", 2, {})


def test_condition_dropout_rate():
    torch.manual_seed(0)
    c = Conditioning("label")
    ctx = c.encode({"label": torch.ones(4000, dtype=torch.long)})
    dropped = (c.drop(ctx, 0.25) == NULL_FILL).all(dim=-1).float().mean().item()
    assert 0.22 < dropped < 0.28
    assert torch.equal(c.drop(ctx, 0.0), ctx)


def test_guidance_interpolates_between_branches():
    def net(x, timesteps, context):  # a toy denoiser whose output reveals the context it saw
        return x + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    x, t = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    cond, null = torch.full((2, 1, 3), 0.5), torch.full((2, 1, 3), NULL_FILL)
    torch.testing.assert_close(guided(net, cond, null, 1.0)(x, t), net(x, t, cond))
    torch.testing.assert_close(guided(net, cond, null, 0.0)(x, t), net(x, t, null))
    torch.testing.assert_close(guided(net, cond, null, 3.0)(x, t), torch.full_like(x, -1.0 + 3.0 * 1.5))


@pytest.mark.parametrize("mode", ["label", "attrs", "both"])
def test_conditional_ddpm_trains_and_samples_on_request(tmp_path, mode):
    cfg = compose_train(tmp_path, ["debug=smoke", f"model.cond={mode}", "model.process.num_inference_steps=3"])
    pl.seed_everything(0)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    model = instantiate(cfg.model, "model")
    fit(model, datamodule, tmp_path)
    request = {"label": torch.tensor([1, 1, 0]), "age": torch.tensor([80.0, 30.0, 50.0]),
               "sex": torch.tensor([0.0, 1.0, 1.0])}
    request = {k: v for k, v in request.items() if k in model.conditioning.keys}
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    a = model.sample(3, generator=gen(), cond=request)
    assert a.shape == (3, 1, 16, 16) and a.abs().max() <= 1
    torch.testing.assert_close(model.sample(3, generator=gen(), cond=request), a, rtol=0, atol=0)
    model.sample_batch_size = 1  # conditions are split with the noise: same images one by one
    torch.testing.assert_close(model.sample(3, generator=gen(), cond=request), a, rtol=1e-4, atol=1e-4)
    unconditional = model.sample(3, generator=gen())
    assert not torch.allclose(unconditional, a)


def test_requested_conditions_have_exact_shares_and_ranges():
    from synthmed.models.conditioning import requested

    assert requested(None, {"age": None}, n=4) is None
    cond = requested({0: 0.5, 1: 0.5}, {"age": [70, 90], "sex": 1}, n=10, seed=3)
    assert cond["label"].dtype == torch.long and cond["label"].sum() == 5  # exactly half lesions
    assert cond["label"][:5].tolist() != [0] * 5 or cond["label"][5:].tolist() != [1] * 5  # mixed, not blocks
    assert ((cond["age"] >= 70) & (cond["age"] <= 90)).all() and (cond["sex"] == 1).all()
    assert torch.equal(requested({0: 0.5, 1: 0.5}, None, n=10, seed=3)["label"], cond["label"])  # seeded
    assert requested(1, None, n=3)["label"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="sum to 1"):
        requested({0: 0.5, 1: 0.6}, None, n=4)


def test_sample_command_rebalances_classes_on_request(run_root, tmp_path):
    import json

    from synthmed.sample import sample
    from synthmed.train import train

    train(compose_train(run_root, ["debug=smoke", "model.cond=both", "model.process.num_inference_steps=2",
                                   "eval.n_samples=4"]))
    out = tmp_path / "balanced"
    paths = sample(compose_train(run_root, [f"run={_only_run_id(run_root)}", "n=6",
                                            "cond.label={0:0.5,1:0.5}", "cond.attrs.age=75", "cond.attrs.sex={0:0.5,1:0.5}",
                                            f"out={out}"],
                                 config_name="sample"))
    sidecars = [json.loads(p.with_suffix(".json").read_text()) for p in paths]
    assert sorted(s["cond"]["label"] for s in sidecars) == [0, 0, 0, 1, 1, 1]
    assert all(s["cond"]["age"] == 75.0 for s in sidecars) and sum(s["cond"]["sex"] for s in sidecars) == 3
    with pytest.raises(KeyError, match=r"add cond\.attrs\.sex=\.\.\."):
        sample(compose_train(run_root, [f"run={_only_run_id(run_root)}", "n=2", "cond.label=1", "cond.attrs.age=75",
                                        f"out={out}"], config_name="sample"))


def _only_run_id(root) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run.info.run_id
