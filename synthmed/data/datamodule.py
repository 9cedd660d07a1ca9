"""The generic, DDP-safe datamodule: one class for every on-disk format.

A format is a Dataset class built as `dataset(split="train"|"val"|"test")` from a Hydra partial
(conf/dataset/*.yaml). It exposes `spatial_dims`, `channels`, `fingerprint` (same for all splits) and `intensity`
(the native -> [-1, 1] mapping that exports invert). Under DDP, Lightning shards the training order; the val/test
loaders shard themselves without padding (`ShardSampler`), so an evaluation scores each of its N images once.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

SPLITS = ("train", "val", "test")


BALANCE = (None, "label")


def covariates(dataset, n: int | None = None) -> dict[str, torch.Tensor]:
    """``label`` and every ``attrs`` entry of the first ``n`` items of a dataset (DESIGN.md items), each ``[n]``:
    the ``train_cond`` / ``real_cond`` of a split. Keys that some item lacks are left out."""
    count = len(dataset) if n is None else min(n, len(dataset))
    if hasattr(dataset, "covariates"):  # the phantoms: no need to copy every image
        return {k: torch.as_tensor(v[:count]) for k, v in sorted(dataset.covariates().items())}
    items = [dataset[i] for i in range(count)]
    rows = [{**({"label": it["label"]} if "label" in it else {}), **it.get("attrs", {})} for it in items]
    keys = set.intersection(*(set(r) for r in rows)) if rows else set()
    return {k: torch.as_tensor([r[k] for r in rows]) for k in sorted(keys)}


def class_balancing_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-item sampling weights `[N]` that make every class present equally frequent in expectation."""
    labels = torch.as_tensor(labels).long()
    return 1.0 / torch.bincount(labels).double()[labels]


class EpochSampler(Sampler[int]):
    """Indices whose order depends only on (seed, epoch), so a resumed run sees the same batches.

    Without `weights` an epoch is a permutation; with them it is `length` draws with replacement, item i with
    probability proportional to `weights[i]` (class-balanced training of a rare class).

    `skip_in(epoch, n)` drops the first n indices of that one epoch: the batches a killed run had already consumed.
    `__len__` stays the full length, so Lightning's count of batches per epoch is unchanged by a resume.
    """

    def __init__(self, length: int, seed: int = 0, weights: torch.Tensor | None = None) -> None:
        if weights is not None and tuple(weights.shape) != (length,):
            raise ValueError(f"weights must have one entry per item ({length}), got shape {tuple(weights.shape)}")
        self.length, self.seed, self.epoch, self.weights = length, seed, 0, weights
        self._skip: tuple[int, int] = (-1, 0)

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at the start of every epoch
        self.epoch = epoch

    def skip_in(self, epoch: int, n: int) -> None:
        self._skip = (epoch, n)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = (torch.randperm(self.length, generator=gen) if self.weights is None else
                 torch.multinomial(self.weights, self.length, replacement=True, generator=gen))
        start = self._skip[1] if self._skip[0] == self.epoch else 0
        return iter(order[start:].tolist())

    def __len__(self) -> int:
        return self.length


class ShardSampler(DistributedSampler):
    """Rank r of W gets items r, r + W, r + 2W, ... in order: every item exactly once across ranks.

    torch's DistributedSampler pads the last round with repeated items so all ranks get equal counts; a validation
    of N images on W ranks would then score ceil(N / W) * W images, some twice. Ranks here may get one item less;
    Lightning's epoch means weight each rank by its batch sizes, so a logged mean is the mean over the N items.
    Subclassing DistributedSampler keeps Lightning from wrapping it in its own (padding) sampler.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.indices = list(range(rank, len(dataset), num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class GenerativeDataModule(pl.LightningDataModule):
    """Wraps a dataset factory into train/val/test loaders.

    Args:
        dataset: callable `dataset(split=...) -> Dataset` (a `_partial_` config) whose items are dicts with an
            `image` tensor `[C, H, W]` or `[C, H, W, D]` in [-1, 1].
        batch_size: images per step per device.
        num_workers: loader processes (speed only; results do not depend on it).
        val_batch_size: batch size of the val/test loaders; defaults to `batch_size`.
        seed: seed of the training order (epoch e is drawn with seed + e).
        balance: None, or `label`: draw training items so that every label class is equally frequent (with
            replacement). A conditional model then sees its rare class as often as the common one; its
            unconditional samples follow the balanced mix, not the data's.
    """

    def __init__(self, dataset: Callable[..., Dataset], batch_size: int = 16, num_workers: int = 0,
                 val_batch_size: int | None = None, seed: int = 0, balance: str | None = None) -> None:
        super().__init__()
        if balance not in BALANCE:
            raise ValueError(f"dataset.datamodule.balance must be one of {BALANCE}, got {balance!r}")
        if batch_size < 1:
            raise ValueError(f"dataset.datamodule.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"dataset.datamodule.num_workers must be >= 0, got {num_workers}")
        self.dataset_factory = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_batch_size = val_batch_size or batch_size
        self.seed, self.balance = seed, balance
        self._splits: dict[str, Dataset] = {}

    def split(self, name: str) -> Dataset:
        """The dataset of one split, built once (construction may render or scan files)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got '{name}'")
        if name not in self._splits:
            self._splits[name] = self.dataset_factory(split=name)
        return self._splits[name]

    @cached_property
    def fingerprint(self) -> str:
        """The dataset's fingerprint (the `synthmed.dataset_fingerprint` tag)."""
        return str(self.split("train").fingerprint)

    @property
    def intensity(self) -> dict:
        return dict(getattr(self.split("train"), "intensity", {}))

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}
        for name in wanted.get(stage, SPLITS):
            self.split(name)

    def _loader(self, split: str, sampler: Sampler | None = None, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            self.split(split),
            batch_size=self.batch_size if split == "train" else self.val_batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Its own generator: creating an iterator would otherwise draw from the global RNG and shift the
            # training noise of a resumed run by one draw.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def sampling_weights(self) -> torch.Tensor | None:
        """Per-item weights of the training draw (None: a plain shuffle)."""
        if self.balance is None:
            return None
        labels = covariates(self.split("train")).get("label")
        if labels is None:
            raise ValueError("dataset.datamodule.balance=label: this data set's training items carry no 'label'")
        return class_balancing_weights(labels)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(len(self.split("train")), self.seed, self.sampling_weights())
        loop = self.trainer.fit_loop if self.trainer is not None else None
        if loop is not None and loop.restarting:
            # Resuming mid-epoch: continue the interrupted epoch's order after the batches already trained on.
            done = loop.epoch_loop.batch_progress.current.ready
            sampler.skip_in(loop.epoch_progress.current.processed, done * self.batch_size)
        return self._loader("train", sampler, drop_last=True)  # equal-sized training steps

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self._shard("val"))  # evaluation sees every image once, in order

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self._shard("test"))

    def _shard(self, split: str) -> ShardSampler | None:
        """This rank's share of an evaluation split under DDP (None on one device: the plain order)."""
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        if world <= 1:
            return None
        return ShardSampler(self.split(split), num_replicas=world, rank=int(trainer.global_rank))

    def images(self, split: str, n: int | None = None) -> torch.Tensor:
        """The first n images of a split stacked `[n, C, *spatial]` (reference sets for metrics)."""
        return self._stack(split, n, "image")

    def _stack(self, split: str, n: int | None, key: str) -> torch.Tensor:
        """`key` of the first n items of a split, stacked; never augmented (a reference set must not be random)."""
        ds = self.split(split)
        count = len(ds) if n is None else min(n, len(ds))
        items = [ds.item(i, augment=False) if hasattr(ds, "item") else ds[i] for i in range(count)]
        if items and key not in items[0]:
            raise KeyError(f"items of split {split!r} have no {key!r}: a paired data set is needed")
        return torch.stack([it[key] for it in items])
