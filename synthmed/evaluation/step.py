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
from synthmed.metrics.translation import translation_metrics
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


def target_intensity(datamodule) -> dict | None:
    """The data's target mapping (e.g. the HU window of CT targets), or None for data without targets."""
    try:  # PairedDataModule's property raises for items without a target
        record = getattr(datamodule, "target_intensity", None)
    except ValueError:
        record = None
    return record or getattr(datamodule.split("train"), "target_intensity", None)


def translation_scores(model: GenerativeModule, datamodule, fake: Tensor, split: str) -> dict[str, float]:
    """A translator's samples against the real targets of the sources they translated (sample i = item
    `i mod len(split)`, as `source_request` drew them): MAE/PSNR/SSIM in native units (HU for CT) inside the body
    mask and the identity baseline, under the keys `validation_step` logs (metrics/translation.py). Empty for a
    non-translator or data without targets.

    Args:
        fake: the translations `[n, *image_shape]` in [-1, 1].
    """
    intensity = target_intensity(datamodule) if model.requires_source else None
    items = datamodule.split(split)
    if not intensity or "target" not in items[0]:
        return {}
    target = torch.stack([items[i % len(items)]["target"] for i in range(len(fake))])
    source = torch.stack([items[i % len(items)]["image"] for i in range(len(fake))])
    return translation_metrics(fake, target, source if source.shape == target.shape else None, dict(intensity),
                               getattr(model, "mask_threshold", None), getattr(model, "mask_dilate", 2))


def evaluate_generation(model: GenerativeModule, datamodule, suite, n_samples: int, seed: int, split: str = "val",
                        n_real: int | None = None, translation: bool = False) -> Evaluation:
    """Sample `n_samples` images with `seed` and score them against the first `n_real` images of `split`.

    A conditional model is asked for every class equally often (and covariates drawn like the training set's),
    so the conditioning metrics read each request once; a translator translates the sources of `split`, and with
    `translation` (final evaluations: periodic ones leave these keys to `validation_step`) its translations are
    also scored against their targets in native units (`translation_scores`).
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
    if translation:
        result.values.update(translation_scores(model, datamodule, fake, split))
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
