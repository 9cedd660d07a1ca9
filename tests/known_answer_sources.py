"""Known-answer generators for the utility harness (DESIGN.md section 4): they plug in where a run's sampler would.

- `Oracle`: fresh phantom subjects of the same distribution (another seed): the ideal generator;
- `Copier`: training images of the requested class, repeated: no new information;
- `LabelFlipper`: fresh subjects of the *other* class: wrong labels;
- `Noise`: uniform noise in [-1, 1]: nothing to learn.
"""

from __future__ import annotations

import torch
from torch import Tensor

from synthmed.data.phantom import PhantomDataset
from synthmed.evaluation.utility import LabelledSplit, SyntheticSource


class Oracle(SyntheticSource):
    """Fresh phantom subjects (half of them with lesions) rendered from `seed + 1000 + draw seed`."""

    classes = (0, 1)

    def __init__(self, phantom_kwargs: dict, seed: int = 1000, flip: bool = False):
        self.kwargs, self.base, self.flip = dict(phantom_kwargs), seed, flip

    def sample(self, labels: Tensor, seed: int, real: LabelledSplit) -> Tensor:
        want = 1 - labels if self.flip else labels
        n = 2 * max(int(want.sum()), int((want == 0).sum()), 1) + 8
        ds = PhantomDataset("train", **{**self.kwargs, "n_train": n, "lesion_prevalence": 0.5,
                                        "seed": self.base + seed})
        by_class = {c: ds.image[torch.as_tensor(ds.covariates()["label"]) == c] for c in (0, 1)}
        out = torch.empty(len(labels), *ds.image.shape[1:])
        for c in (0, 1):
            idx = torch.nonzero(want == c)[:, 0]
            out[idx] = by_class[c][: len(idx)]
        return out


class LabelFlipper(Oracle):
    def __init__(self, phantom_kwargs: dict, seed: int = 1000):
        super().__init__(phantom_kwargs, seed, flip=True)


class Copier(SyntheticSource):
    """Training images of the requested class (the classifier's own real sub-sample), cycled in a seeded order."""

    classes = (0, 1)

    def sample(self, labels: Tensor, seed: int, real: LabelledSplit) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        out = torch.empty(len(labels), *real.images.shape[1:])
        for c in (0, 1):
            members = torch.nonzero(real.labels == c)[:, 0]
            members = members[torch.randperm(len(members), generator=gen)]
            idx = torch.nonzero(labels == c)[:, 0]
            out[idx] = real.images[members[torch.arange(len(idx)) % len(members)]]
        return out


class Noise(SyntheticSource):
    """Uniform noise images shaped like `shape` ([C, *spatial])."""

    classes = (0, 1)

    def __init__(self, shape):
        self.shape = tuple(shape)

    def sample(self, labels: Tensor, seed: int, real: LabelledSplit) -> Tensor:
        return torch.rand(len(labels), *self.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
