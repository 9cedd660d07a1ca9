"""Memorization: are samples closer to training images than unseen real images are?

For each sample we find its nearest training image (distance and Pearson correlation), and do the same for
held-out real images. Held-out images are what "new but realistic" looks like, so a low quantile of their
nearest-training distances is the threshold: a sample closer than that is flagged. A model that returns
training images is flagged at rate ~1; a model drawing fresh samples from the data distribution at rate ~quantile.
(Calibrated nearest-neighbour tests as in Meehan et al. 2020, AISTATS; Carlini et al. 2023, USENIX Security.)
Works on any vectors: flattened pixels (``[B, C, H, W(, D)]``) or features (``[B, D]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_BLOCK = 256  # query rows per distance block


@dataclass
class NearestNeighbours:
    """Per query: ``index`` ``[N]`` of the nearest reference, RMS ``distance`` ``[N]``, ``correlation`` ``[N]``."""

    index: Tensor
    distance: Tensor
    correlation: Tensor


@dataclass
class MemorizationResult:
    """Outcome of ``memorization``.

    Attributes:
        rate: share of samples nearer to a training image than ``threshold``.
        threshold: the ``quantile`` of held-out-to-train nearest distances.
        quantile: the calibration quantile.
        samples: nearest training image of each sample.
        heldout: nearest training image of each held-out real image.
        top_pairs: the ``top_k`` closest (sample index, train index, distance), closest first, for logging images.
    """

    rate: float
    threshold: float
    quantile: float
    samples: NearestNeighbours
    heldout: NearestNeighbours
    top_pairs: list[tuple[int, int, float]]


def nearest_neighbours(queries: Tensor, reference: Tensor) -> NearestNeighbours:
    """Nearest row of ``reference`` ``[M, ...]`` for each of ``queries`` ``[N, ...]`` (flattened, float64).

    float64 because the matmul form of Euclidean distance cancels catastrophically near 0 in float32, and an
    exact copy must come out at distance ~0.
    """
    q, r = queries.flatten(1).double(), reference.flatten(1).to(queries.device, torch.float64)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries and reference differ in size per item: {q.shape[1]} vs {r.shape[1]}")
    dist, index = zip(*(torch.cdist(block, r).min(1) for block in q.split(_BLOCK)))
    index = torch.cat(index)
    rms = torch.cat(dist) / q.shape[1] ** 0.5  # per-element RMS: comparable across image sizes
    return NearestNeighbours(index, rms.float(), _pearson(q, r[index]).float())


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation ``[N]`` of ``[N, P]`` pairs; constant rows give 0."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denom = (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-12)
    return (a * b).sum(1) / denom


def memorization(samples: Tensor, train: Tensor, heldout: Tensor, quantile: float = 0.05,
                 top_k: int = 8) -> MemorizationResult:
    """Share of samples closer to a training image than held-out real images usually are.

    Args:
        samples: generated items ``[N, ...]``.
        train: training items ``[M, ...]`` the model saw.
        heldout: real items ``[K, ...]`` the model did not see (e.g. the validation set), K >= 2.
        quantile: calibration quantile in (0, 1): the expected rate for a model that does not copy.
        top_k: closest pairs to return.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if heldout.shape[0] < 2 or samples.shape[0] < 1 or train.shape[0] < 1:
        raise ValueError(f"need >= 1 sample, >= 1 train and >= 2 heldout items, got {samples.shape[0]}, "
                         f"{train.shape[0]}, {heldout.shape[0]}")
    fake_nn, held_nn = nearest_neighbours(samples, train), nearest_neighbours(heldout, train)
    threshold = float(torch.quantile(held_nn.distance.double(), quantile))
    rate = float((fake_nn.distance < threshold).float().mean())
    order = fake_nn.distance.argsort()[:top_k]
    top = [(int(i), int(fake_nn.index[i]), float(fake_nn.distance[i])) for i in order]
    return MemorizationResult(rate, threshold, quantile, fake_nn, held_nn, top)
