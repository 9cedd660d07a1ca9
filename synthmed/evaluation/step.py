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


def lesion_scores(model: GenerativeModule, datamodule, fake: Tensor, split: str,
                  suite) -> tuple[dict[str, float], dict[str, str]]:
    """A translator's lesion preserved / appeared rates (metrics/lesions.py), each with its n and Wilson 95 %
    interval, when a lesion reader can be trained for the target domain: the training split's targets carry lesion
    labels of both classes, and the scored split's sources carry theirs. Otherwise the values are empty and a
    `lesion_preservation.skipped` tag says why.

    Sample i translates item `i mod len(split)` (`source_request`); repeats of an input are not new evidence about
    it, so only the first translation of each distinct input is read (n <= len(split)). Where the split has paired
    truth, the reader's own rates on the real targets come too (`..._real`).

    Args:
        fake: the translations `[n, *image_shape]` in [-1, 1].
        suite: the MetricSuite whose encoder bank trains (or loads) the reader and whose window it reads through.
    """
    if not model.requires_source or getattr(model, "direction", "a2b") != "a2b":
        return {}, {}
    intensity, items, train = target_intensity(datamodule), datamodule.split(split), datamodule.split("train")
    n = min(len(fake), len(items))
    input_labels = covariates(items, n).get("label")
    train_labels = target_labels(train)
    reason = lesion_skip_reason(intensity, input_labels, train_labels, hasattr(datamodule, "sources"))
    if reason:
        return {}, {"lesion_preservation.skipped": reason}
    real = (torch.stack([items[i]["target"] for i in range(n)]) if getattr(items, "paired_truth", True) else None)
    return suite.lesion_preservation(fake[:n], input_labels, datamodule.images("train"), train_labels,
                                     dict(intensity), real, datamodule.fingerprint)


def target_labels(dataset) -> Tensor | None:
    """Lesion labels `[N]` of a split's targets: the data set's own `target_labels()` (unpaired: other subjects'),
    else, for registered pairs, the items' `label` (source and target are one subject); None when unknown."""
    if hasattr(dataset, "target_labels"):
        try:
            return torch.as_tensor(dataset.target_labels())
        except ValueError:  # dataset=unpaired whose domain B has no label column
            return None
    if not getattr(dataset, "paired_truth", True) or "label" not in dataset[0]:  # one item asked, not every volume
        return None
    return covariates(dataset).get("label")


def lesion_skip_reason(intensity: dict | None, input_labels: Tensor | None, train_labels: Tensor | None,
                       paired_module: bool) -> str | None:
    """Why no lesion reader can score this translator's outputs, or None when one can."""
    if not intensity or not paired_module:
        return "no target domain: the datamodule is not a translation data set (PairedDataModule)"
    if train_labels is None:
        return "the training split's targets carry no lesion labels: no target-domain reader can be trained"
    if train_labels.gt(0).all() or not train_labels.gt(0).any():
        return (f"a lesion reader needs training targets with and without a lesion, got "
                f"{int(train_labels.gt(0).sum())} of {len(train_labels)} with one")
    if input_labels is None:
        return "the scored split's sources carry no lesion label: preserved/appeared rates need the input's"
    return None


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
        values, tags = lesion_scores(model, datamodule, fake, split, suite)
        result.values.update(values)
        result.tags.update(tags)
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
