"""Conditional generation: encoding of labels/covariates, classifier-free guidance, conditional DDPM."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from synthmed.config import instantiate
from synthmed.metrics import names
from synthmed.models.conditioning import NULL_FILL, Conditioning, guided, set_guidance
from synthmed.tracking import tags as tk
from synthmed.train import train
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


def test_sampling_requests_a_model_cannot_honour_are_refused():
    from synthmed.models.conditioning import check_request

    one = {"label": torch.tensor([1])}
    for unconditional in (None, Conditioning(None)):
        with pytest.raises(ValueError, match=r"trained without conditioning \(model.cond=null\)"):
            check_request(unconditional, one)
        check_request(unconditional, None)  # nothing asked: fine
    check_request(Conditioning("label"), one)
    check_request(Conditioning("label"), None)  # the unconditional branch / training conditions
    with pytest.raises(KeyError, match=r"\['age'\], which this model does not use"):
        check_request(Conditioning("label"), {**one, "age": torch.tensor([70.0])})
    with pytest.raises(ValueError, match="label must be in"):
        check_request(Conditioning("label"), {"label": torch.tensor([3])})


def test_grids_of_label_models_show_every_class_in_blocks():
    from synthmed.callbacks.samples import grid_request

    assert grid_request(Conditioning("label"), 6)["label"].tolist() == [0, 0, 0, 1, 1, 1]
    assert grid_request(Conditioning("label", 3), 6)["label"].tolist() == [0, 0, 1, 1, 2, 2]
    assert grid_request(Conditioning("both", 2, RANGES), 6) is None and grid_request(None, 6) is None


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


# Each conditional family with one mode per case: every mode is covered, and each family trains once.
CONDITIONAL = [("ddpm", "label"), ("ddpm", "attrs"), ("ddpm", "both"), ("ldm", "both"), ("gan", "both"),
               ("gan", "label")]


def build_conditional(tmp_path, family: str, mode: str):
    from tests.test_contract import build, prerequisites

    stages = prerequisites(tmp_path, family, "phantom2d")
    _, datamodule, model = build(tmp_path, family, "phantom2d", [f"model.cond={mode}", *stages])
    return datamodule, model


@pytest.mark.parametrize("family,mode", CONDITIONAL)
def test_conditional_models_train_and_sample_on_request(tmp_path, family, mode):
    datamodule, model = build_conditional(tmp_path, family, mode)
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
    flipped = {**request, **({"label": 1 - request["label"]} if "label" in request else
                             {"age": 110.0 - request["age"]})}
    assert not torch.allclose(model.sample(3, generator=gen(), cond=flipped), a)  # the condition is read
    unconditional = model.sample(3, generator=gen())  # diffusion: null branch; GAN: conditions seen in training
    assert unconditional.shape == a.shape and not torch.allclose(unconditional, a)
    if family == "gan":
        with pytest.raises(ValueError, match="no classifier-free guidance"):
            set_guidance(model, 2.0)
    else:  # guidance weight 0 is the unconditional branch
        assert set_guidance(model, None) == 3.0 and set_guidance(model, 0.0) == 0.0
        torch.testing.assert_close(model.sample(3, generator=gen(), cond=request), unconditional, rtol=1e-4,
                                   atol=1e-4)
    with pytest.raises(KeyError, match="does not use"):
        model.sample(1, cond={**{k: v[:1] for k, v in request.items()}, "height": torch.tensor([1.0])})


def test_gan_condition_prior_keeps_training_conditions(tmp_path):
    from synthmed.models.conditioning import ConditionPrior

    prior = ConditionPrior(5, 2)
    with pytest.raises(RuntimeError, match="pass cond"):
        prior.draw([torch.Generator()])
    prior.add(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    prior.add(torch.tensor([[0.0, 1.0]] * 4))  # only two more fit
    assert int(prior.count) == 5 and prior.rows[3:].tolist() == [[0.0, 1.0]] * 2
    draws = prior.draw([torch.Generator().manual_seed(i) for i in range(200)])
    assert 0.25 < draws[:, 0].mean() < 0.55  # 2 of 5 kept rows are class 0
    datamodule, model = build_conditional(tmp_path, "gan", "label")
    fit(model, datamodule, tmp_path, steps=3)
    labels = model.prior.rows[: int(model.prior.count)].argmax(1)
    assert int(model.prior.count) == 12  # 3 steps of batch 4
    assert set(labels.tolist()) <= {0, 1} and "prior.rows" in model.state_dict()


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

    final = train(compose_train(run_root, ["debug=smoke", "model.cond=both", "model.process.num_inference_steps=2",
                                           "eval.n_samples=4", "metrics.domain_steps=20"]))
    # A conditional run is scored on what it was asked for (eval.cond_metrics), per requested class too.
    assert {names.COND_ACCURACY, names.per_class(names.COND_ACCURACY, 1), names.COND_AGE_MAE} <= set(final)
    out = tmp_path / "balanced"
    paths = sample(compose_train(run_root, [f"run={_only_run_id(run_root)}", "n=6", "guidance_scale=1.5",
                                            "cond.label={0:0.5,1:0.5}", "cond.attrs.age=75", "cond.attrs.sex={0:0.5,1:0.5}",
                                            f"out={out}"],
                                 config_name="sample"))
    sidecars = [json.loads(p.with_suffix(".json").read_text()) for p in paths]
    assert sorted(s["cond"]["label"] for s in sidecars) == [0, 0, 0, 1, 1, 1]
    assert all(s["cond"]["age"] == 75.0 for s in sidecars) and sum(s["cond"]["sex"] for s in sidecars) == 3
    assert all(s["guidance_scale"] == 1.5 for s in sidecars)
    with pytest.raises(KeyError, match=r"add cond\.attrs\.sex=\.\.\."):
        sample(compose_train(run_root, [f"run={_only_run_id(run_root)}", "n=2", "cond.label=1", "cond.attrs.age=75",
                                        f"out={out / 'refused'}"], config_name="sample"))
    assert not (out / "refused").exists()  # refused before anything was written


def test_evaluate_at_another_guidance_scale_goes_to_a_child_run(run_root):
    from mlflow.tracking import MlflowClient

    from synthmed.evaluate import evaluate

    train(compose_train(run_root, ["debug=smoke", "model.cond=label", "model.process.num_inference_steps=2",
                                   "eval.n_samples=4"]))
    run_id = _only_run_id(run_root)
    overrides = [f"run={run_id}", "n_samples=8", "metrics=default", "guidance_scale=1.0"]
    with pytest.raises(ValueError, match="needs child_run=true"):
        evaluate(compose_train(run_root, overrides, config_name="evaluate"))
    ev = evaluate(compose_train(run_root, [*overrides, "child_run=true"], config_name="evaluate"))
    client = MlflowClient(f"sqlite:///{run_root}/mlflow.db")
    child = next(r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                 if r.info.run_id != run_id)
    assert child.data.tags["synthmed.eval.guidance_scale"] == "1.0" and len(ev.fake) == 8
    assert client.get_run(run_id).data.tags.get("synthmed.eval.guidance_scale") is None
    # The child carries the trained run's config hash, yet a hash still finds the trained run (sample, reproduce).
    from synthmed.tracking import mlflow_utils as mt

    config_hash = child.data.tags[tk.CONFIG_HASH]
    assert config_hash == client.get_run(run_id).data.tags[tk.CONFIG_HASH]
    assert mt.find_run(client, config_hash[:8]).info.run_id == run_id


def _only_run_id(root) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run.info.run_id


# The guidance test's setting: 10% lesions as in the default phantom, but conspicuous ones (4-6 px at 24 px) and
# class-balanced draws, so that a small CPU run learns the rare class; v-prediction gives clean few-step samples.
# At 24 px and 600 steps (seed 0) it reads 0.77 of lesion requests as lesions vs 0.31 of healthy ones (Fisher
# p 2e-7); 32 px needed 800 steps for p 9e-5 at twice the cost.
GUIDANCE = ["dataset.size=24", "dataset.datamodule.batch_size=16", "dataset.datamodule.balance=label",
            "dataset.datamodule.dataset.lesion_radius=[0.15,0.25]", "model.cond=label",
            "model.net.channels=[16,32,32]", "model.net.norm_num_groups=8", "model.net.num_head_channels=16",
            "model.net.attention_levels=[false,true,true]", "model.process.prediction_type=v_prediction",
            "model.process.num_inference_steps=20", "model.optimizer.lr=2e-3"]


@pytest.mark.slow
def test_guidance_moves_the_class_mix_toward_the_request(tmp_path):
    """Asked for lesions, a label-conditioned DDPM trained on 10% lesions makes images that the conditioning
    classifier (trained on the real training split) reads as lesions far above the 10% base rate and far more often
    than images asked to be healthy. An independent statistic agrees: the count of lesion-bright pixels (> 0.9;
    only lesions reach it on the phantoms). ~1.5 min on 2 CPU cores."""
    from scipy.stats import fisher_exact

    from synthmed.data.datamodule import covariates
    from synthmed.metrics.conditioning import cond_metrics
    from synthmed.metrics.domain import EncoderBank, EncoderSettings

    cfg = compose_train(tmp_path, GUIDANCE)
    pl.seed_everything(0)
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    model = instantiate(cfg.model, "model")
    fit(model, datamodule, tmp_path, steps=600)
    n = 64
    request = {"label": torch.arange(2 * n) % 2}  # every other sample asks for a lesion
    fake = model.sample(2 * n, generator=torch.Generator().manual_seed(1), cond=request)
    train_images, train_cond = datamodule.images("train"), covariates(datamodule.split("train"))
    assert train_cond["label"].float().mean() == pytest.approx(0.1, abs=0.01)  # the rare class is rare
    values, _ = cond_metrics(EncoderBank(EncoderSettings()), fake, request, train_images, train_cond,
                             real=datamodule.images("val"), real_cond=covariates(datamodule.split("val")))
    lesion_rate = values[names.per_class(names.COND_ACCURACY, 1)]  # asked for lesions, read as lesions
    healthy_read_as_lesion = 1 - values[names.per_class(names.COND_ACCURACY, 0)]
    assert values[names.on_real(names.COND_BALANCED_ACCURACY)] > 0.9  # the reader itself reads real images well
    assert lesion_rate >= 0.4, f"asked for lesions, {lesion_rate:.2f} read as lesions (base rate 0.10)"
    assert lesion_rate - healthy_read_as_lesion >= 0.15
    table = [[round(lesion_rate * n), n - round(lesion_rate * n)],
             [round(healthy_read_as_lesion * n), n - round(healthy_read_as_lesion * n)]]
    assert fisher_exact(table, alternative="greater").pvalue < 0.01
    bright = (fake > 0.9).flatten(1).sum(1).float()
    assert bright[request["label"] == 1].mean() > 2 * bright[request["label"] == 0].mean()
