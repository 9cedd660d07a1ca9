"""Conditioning accuracy: does a conditional generator produce what was asked for?

Classifiers and a regressor trained once on the real training split (the encoders of synthmed/metrics/domain.py)
read the generated images; their reading is compared with the conditions each sample was requested with:
``val/cond_accuracy`` (label), ``val/cond_sex_accuracy`` and ``val/cond_age_mae`` (years), overall, per requested
class and per requested age bin, so that a rare class is scored on its own. The same readers on real held-out
images with their true conditions give the ceiling (``names.on_real``): a generator cannot beat its reader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from synthmed.metrics import names
from synthmed.metrics.domain import ROLES, EncoderBank, targets_of

CLASS_METRICS = {"label": names.COND_ACCURACY, "sex": names.COND_SEX_ACCURACY}  # categorical condition -> key
VALUE_METRICS = {"age": names.COND_AGE_MAE}  # continuous condition -> key of its mean absolute error


def cond_metrics(encoders: EncoderBank, fake: Tensor, cond: Mapping[str, Tensor], train: Tensor,
                 train_cond: Mapping[str, Tensor] | None, *, real: Tensor | None = None,
                 real_cond: Mapping[str, Tensor] | None = None, age_bins: Sequence[float] = (),
                 fingerprint: str | None = None, digest: str | None = None,
                 batch_size: int = 50) -> tuple[dict[str, float], dict[str, str]]:
    """Values and provenance tags of the conditioning metrics.

    Args:
        encoders: where the readers come from (trained on ``train`` and ``train_cond`` once, then cached).
        fake: generated images ``[n, C, *spatial]``; ``cond``: what each was requested with, target -> ``[n]``.
        train: training images ``[N, C, *spatial]``; ``train_cond``: their targets, target -> ``[N]``.
        real, real_cond: held-out images and their true targets, for the ``names.on_real`` ceilings (optional).
        age_bins, fingerprint, digest, batch_size: see ``score`` and ``EncoderBank.get``.
    """
    cond = check_cond(cond, fake.shape[0])
    trainable = targets_of(train_cond, train.shape[0])
    readable = [k for k in cond if k in trainable and (k in CLASS_METRICS or k in VALUE_METRICS)]
    tags = {"cond_accuracy.n_fake": str(fake.shape[0])}
    if set(cond) - set(readable):
        tags["cond_accuracy.unread"] = (f"{sorted(set(cond) - set(readable))}: no reader (train_cond lacks them or "
                                        f"no metric reads them; metrics exist for {[*CLASS_METRICS, *VALUE_METRICS]})")
    if not readable:
        return {}, tags | {"cond_accuracy.skipped": f"none of cond's keys {sorted(cond)} can be read"}
    models = [encoders.get(role, train, train_cond, fingerprint, digest) for role, keys in ROLES.items()
              if set(keys) & set(readable)]
    for m in models:
        tags |= m.provenance(f"cond_accuracy.{m.role}")
    values = score(_read(models, fake, readable, batch_size), {k: cond[k] for k in readable}, age_bins)
    if real is not None and real_cond is not None:
        real_cond = check_cond(real_cond, real.shape[0], "real_cond")
        truth = {k: real_cond[k] for k in readable if k in real_cond}
        values |= {names.on_real(k): v
                   for k, v in score(_read(models, real, list(truth), batch_size), truth, groups=False).items()}
        tags["cond_accuracy.n_real"] = str(real.shape[0])
    return values, tags


def _read(models, images: Tensor, keys: Sequence[str], batch_size: int) -> dict[str, Tensor]:
    """The readings of ``keys`` from whichever encoder has a head for them."""
    out = {}
    for m in models:
        if set(keys) & set(m.heads):
            out |= {k: v for k, v in m.outputs(images, batch_size).items() if k in keys}
    return out


def check_cond(cond: Mapping[str, Tensor], n: int, name: str = "cond") -> dict[str, Tensor]:
    """``cond`` as tensors ``[n]``; a ValueError names the argument and key with a wrong shape."""
    out = {}
    for key, values in cond.items():
        t = torch.as_tensor(values)
        if t.shape != (n,):
            raise ValueError(f"{name}[{key!r}]: expected one value per image, shape ({n},), got {tuple(t.shape)}")
        out[key] = t
    return out


def score(predicted: Mapping[str, Tensor], cond: Mapping[str, Tensor], age_bins: Sequence[float] = (),
          groups: bool = True) -> dict[str, float]:
    """Metric values of readings against requests.

    Args:
        predicted: target -> the reader's class indices or values ``[n]``.
        cond: target -> requested class indices or values ``[n]``; targets without a reading are left out.
        age_bins: increasing edges of the per-bin age errors; requests outside them count in the end bins.
        groups: also per requested class and per age bin.
    """
    values = {}
    for key, requested in cond.items():
        if key not in predicted:
            continue
        if key in CLASS_METRICS:
            values |= _class_values(CLASS_METRICS[key], predicted[key], requested.long(), groups)
        elif key in VALUE_METRICS:
            values |= _value_values(VALUE_METRICS[key], predicted[key].double(), requested.double(),
                                    age_bins if groups else ())
    return values


def _class_values(key: str, predicted: Tensor, requested: Tensor, groups: bool) -> dict[str, float]:
    hit = (predicted == requested).double()
    per = {int(c): float(hit[requested == c].mean()) for c in requested.unique()}
    values = {key: float(hit.mean())}
    if key == names.COND_ACCURACY:
        values[names.COND_BALANCED_ACCURACY] = sum(per.values()) / len(per)
    return values | ({names.per_class(key, c): v for c, v in per.items()} if groups else {})


def _value_values(key: str, predicted: Tensor, requested: Tensor, edges: Sequence[float]) -> dict[str, float]:
    error = (predicted - requested).abs()
    values = {key: float(error.mean())}
    if len(edges) >= 2:
        inner = torch.as_tensor(list(edges[1:-1]), dtype=torch.float64)
        index = torch.bucketize(requested, inner, right=True)  # bin i covers [edges[i], edges[i + 1])
        for i, (low, high) in enumerate(zip(edges, edges[1:])):
            if (index == i).any():
                values[names.per_bin(key, low, high)] = float(error[index == i].mean())
    return values


def balanced_requests(train_cond: Mapping[str, Tensor], n: int, seed: int = 0) -> dict[str, Tensor]:
    """Conditions for ``n`` evaluation samples: every label class equally often (sample i asks for class
    ``i % classes``, so a rare class is scored on as many samples as a common one), the other covariates from
    training subjects of that class drawn with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    cond = {k: torch.as_tensor(v) for k, v in train_cond.items()}
    if "label" not in cond:
        rows = torch.randint(len(next(iter(cond.values()))), (n,), generator=gen)
        return {k: v[rows] for k, v in cond.items()}
    classes = cond["label"].unique()
    wanted = classes[torch.arange(n) % len(classes)]
    rows = torch.empty(n, dtype=torch.long)
    for c in classes:
        pool, slots = (cond["label"] == c).nonzero()[:, 0], (wanted == c).nonzero()[:, 0]
        rows[slots] = pool[torch.randint(len(pool), (len(slots),), generator=gen)]
    return {k: v[rows] for k, v in cond.items()}
