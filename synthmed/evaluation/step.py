"""The shared evaluation step: sample a model, score the samples with a MetricSuite, keep the record.

Used by the periodic generation metrics during training (callbacks/metrics.py), the final evaluation of
`synthmed train` and `synthmed evaluate`. Only the model's `sample()` and its declared capabilities are used, so
every family gets the same metrics under the same keys. Logging the result is tracking's job (tracking/results.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from synthmed.data.datamodule import covariates
from synthmed.metrics.conditioning import balanced_requests
from synthmed.models.base import GenerativeModule


@dataclass
class Evaluation:
    """A scored set of samples: the suite's result and the images behind it (for artifacts)."""

    result: object  # SuiteResult: values (keys of names.py), tags (provenance), artifacts
    fake: Tensor  # [n, C, *spatial]
    train: Tensor | None  # [m, C, *spatial] when memorization was audited


def source_request(model: GenerativeModule, datamodule, n: int, split: str = "val") -> dict[str, Tensor] | None:
    """`{"source": [n, C_src, *spatial]}` for a translator (`model.requires_source`), else None.

    Sample i translates item `i mod len(split)` of `split`, so it depends only on the seed and i.
    """
    if not model.requires_source:
        return None
    items = datamodule.split(split)
    return {"source": torch.stack([items[i % len(items)]["image"] for i in range(n)])}


def evaluate_generation(model: GenerativeModule, datamodule, suite, n_samples: int, seed: int, split: str = "val",
                        n_real: int | None = None) -> Evaluation:
    """Sample `n_samples` images with `seed` and score them against the first `n_real` images of `split`.

    A conditional model is asked for every class equally often (and covariates drawn like the training set's),
    so the conditioning metrics read each request once; a translator translates the sources of `split`.
    """
    real = datamodule.images(split, n_real)
    train_cond = covariates(datamodule.split("train")) if suite.needs_cond else None
    real_cond = covariates(datamodule.split(split), len(real)) if suite.needs_cond else None
    cond = source_request(model, datamodule, n_samples, split)
    if suite.needs_cond and train_cond and model.is_conditional:
        request = balanced_requests(train_cond, n_samples, seed)
        cond = {k: request[k] for k in model.conditioning.keys}
    fake = model.sample(n_samples, generator=torch.Generator().manual_seed(seed), cond=cond).cpu()
    train = datamodule.images("train") if suite.needs_train else None
    ref_key = f"{datamodule.fingerprint}-{split}-{len(real)}"
    # The suite reads only the condition keys it scores: a translator's sources are not a condition to score.
    scored_cond = {k: v for k, v in cond.items() if k != "source"} if cond else None
    result = suite(fake, real, train=train, ref_key=ref_key, cond=scored_cond or None, train_cond=train_cond,
                   real_cond=real_cond, fingerprint=datamodule.fingerprint)
    return Evaluation(result, fake, train)


def record(evaluation: Evaluation, step: int, **meta) -> dict:
    """The JSON record of an evaluation (metrics/final.json, metrics/eval.json): numbers, provenance, counts."""
    result = evaluation.result
    return {"step": step, "metrics": result.values, "tags": result.tags, "n_samples": len(evaluation.fake), **meta}


def memorization_pairs(evaluation: Evaluation) -> Tensor | None:
    """The audit's closest (sample, training image) pairs side by side, `[2k, C, *spatial]`, or None."""
    audit = evaluation.result.artifacts.get("memorization")
    if audit is None or evaluation.train is None or not audit.top_pairs:
        return None
    return torch.stack([img for s, t, _ in audit.top_pairs for img in (evaluation.fake[s], evaluation.train[t])])
