"""Layers 1 and 2 of the bias report on a generator's images: sample (or take) images, read them, disaggregate.

``image_layers`` works on any set of generated images, so the known-answer generators (an oracle of fresh phantom
subjects, a planted under-representing one) are scored exactly as a trained model's samples are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from synthmed.data.datamodule import covariates
from synthmed.metrics import bias as B
from synthmed.metrics import fairness as fair
from synthmed.metrics.conditioning import balanced_requests
from synthmed.metrics.domain import EncoderBank
from synthmed.models.base import GenerativeModule


def check_groupings(by: Sequence[str], available: Sequence[str], where: str) -> None:
    """A ValueError naming ``by`` when a grouping needs a covariate the data set does not carry."""
    missing = [b for b in by if ("age" if b == "age_band" else b) not in available]
    if not by or missing:
        raise ValueError(f"by={list(by)}: {where} carries covariates {sorted(available)}; cannot group by "
                         f"{missing or 'nothing'} (use sex, age_band or another covariate)")


def sample_for_bias(model: GenerativeModule, train_cond: Mapping[str, Tensor], n: int,
                    seed: int) -> tuple[Tensor, dict[str, np.ndarray] | None]:
    """``n`` samples ``[n, C, *spatial]`` with ``seed``; a conditional model is asked for every label class equally
    often, with covariates drawn as the training set's (``balanced_requests``). Returns the requests too (or None)."""
    cond = None
    if model.is_conditional:
        request = balanced_requests(train_cond, n, seed)
        cond = {k: request[k] for k in model.conditioning.keys}
    fake = model.sample(n, generator=torch.Generator().manual_seed(seed), cond=cond).cpu()
    return fake, ({k: v.numpy() for k, v in cond.items()} if cond else None)


def image_layers(fake: Tensor, train: Tensor, train_cond: Mapping[str, Tensor], real: Tensor,
                 real_cond: Mapping[str, Tensor], encoders: EncoderBank, *, by: Sequence[str],
                 edges: Sequence[float], intersect: bool = False, min_n: int = 20, n_boot: int = 1000,
                 seed: int = 0, requested: Mapping[str, np.ndarray] | None = None, fingerprint: str | None = None,
                 kid_subsets: int = 50, pr_k: int = 3, dc_k: int = 5, memorization_quantile: float = 0.05,
                 batch_size: int = 50, read_label: bool = True) -> dict:
    """Representation (layer 1), conditioning per group (conditional samples) and fidelity per group (layer 2).

    Args:
        fake: generated images ``[n, C, *spatial]`` in [-1, 1].
        train, train_cond: training images ``[N, C, *spatial]`` and their covariates (``sex``, ``age``, ``label``).
        real, real_cond: real held-out images and their covariates (the reader's test and the fidelity reference).
        encoders: where the sex/age reader (and, for label requests, the label reader) comes from.
        by, edges, intersect: groupings (``fairness.group_columns``).
        requested: what each sample was asked for (conditional generators), covariate -> ``[n]``.
        read_label: read the rare class too (trains the lesion reader once per data set: the slowest part).
    """
    reader = encoders.get("domain", train, train_cond, fingerprint)
    missing = [b for b in by if ("age" if b == "age_band" else b) not in reader.heads]
    if missing:
        raise ValueError(f"by={list(by)}: the in-domain reader has no head for {missing} (heads: "
                         f"{sorted(reader.heads)}); only covariates the training set carries can be read")
    fake_read, fake_feats = B.readings(reader, fake, batch_size)
    real_read, real_feats = B.readings(reader, real, batch_size)
    true = {k: np.asarray(v) for k, v in real_cond.items()}
    train_true = {k: np.asarray(v) for k, v in train_cond.items()}
    out = {"n_fake": int(fake.shape[0]), "n_real": int(real.shape[0]), "n_train": int(train.shape[0]),
           "reader": reader.provenance("reader"),
           "representation": B.representation_layer(fake_read, real_read, true, train_true, by, edges, intersect,
                                                    n_boot, seed)}
    wanted = read_label and "label" in train_cond
    label_reader = encoders.get("label", train, train_cond, fingerprint) if wanted else None
    fake_label = label_reader.outputs(fake, batch_size)["label"].numpy() if label_reader else None
    if requested:
        read = dict(fake_read) | ({"label": fake_label} if fake_label is not None else {})
        out["conditioning"] = B.conditioning_layer(requested, read, by, edges, intersect)
    if fake_label is not None and not (requested and "label" in requested):  # requested labels are not a rate
        real_label = label_reader.outputs(real, batch_size)["label"].numpy()
        out["rare_class"] = B.rare_class_layer(
            fake_label, fair.group_columns(B.clip_ages(fake_read, edges), by, edges, intersect), real_label,
            fair.group_columns(B.clip_ages(real_read, edges), by, edges, intersect))
    flags = B.memorized_flags(fake, train, real, memorization_quantile) if real.shape[0] >= 2 else None
    fake_groups = fair.group_columns(B.clip_ages(fake_read, edges), by, edges, intersect)
    real_groups = fair.group_columns(true, by, edges, intersect)
    cell_label, out["fidelity_label_source"] = fidelity_labels(requested, fake_label, true)
    out["fidelity"] = B.fidelity_layer(fake_feats, fake_groups, real_feats, real_groups, flags,
                                       fake_label=cell_label, real_label=true.get("label"), min_n=min_n,
                                       kid_subsets=kid_subsets, pr_k=pr_k, dc_k=dc_k, seed=seed)
    return out


def fidelity_labels(requested: Mapping[str, np.ndarray] | None, read_label: np.ndarray | None,
                    real_true: Mapping[str, np.ndarray]) -> tuple[np.ndarray | None, str]:
    """The class of each generated image for the group x label cells of layer 2, ``[n_fake]``, and where it
    came from: the requested label (conditional samples), else the lesion reader's reading, else None (with why).
    Real images are placed by their true label, so cells need ``label`` on the real side too."""
    if "label" not in real_true:
        return None, "none: the real images carry no label, so there are no group x label cells"
    if requested and "label" in requested:
        return np.asarray(requested["label"]), "requested label"
    if read_label is not None:
        return read_label, "read by the in-domain lesion reader"
    return None, "none: the samples were not read for their label (read_label=false)"


def model_layers(model: GenerativeModule, datamodule, encoders: EncoderBank, *, n_samples: int, seed: int,
                 split: str, n_real: int | None = None, **kwargs) -> dict:
    """``image_layers`` on ``n_samples`` samples of a trained model against the ``split`` of its data."""
    train_cond = covariates(datamodule.split("train"))
    real = datamodule.images(split, n_real)
    real_cond = covariates(datamodule.split(split), len(real))
    fake, requested = sample_for_bias(model, train_cond, n_samples, seed)
    return image_layers(fake, datamodule.images("train"), train_cond, real, real_cond, encoders, seed=seed,
                        requested=requested, fingerprint=datamodule.fingerprint, **kwargs)
