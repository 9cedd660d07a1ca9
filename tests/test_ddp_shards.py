"""DDP evaluation scores exactly N images: val/test shards without DistributedSampler's padding duplicates."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, DistributedSampler

from synthmed.data.datamodule import GenerativeDataModule, ShardSampler
from synthmed.models.base import GenerativeModule


class Numbered(Dataset):
    """Item i is an image filled with the value i (its id readable from any batch)."""

    def __init__(self, split: str, n: int = 5) -> None:
        self.n, self.fingerprint = n, "numbered"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((1, 4, 4), float(i))}


@pytest.mark.parametrize("n,world", [(5, 2), (7, 3), (2, 4), (6, 2)])
def test_shards_cover_every_item_once(n, world):
    data = Numbered("val", n)
    shards = [list(ShardSampler(data, world, rank)) for rank in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(ShardSampler(data, world, r)) for r in range(world)] == [len(s) for s in shards]
    padded = [i for r in range(world) for i in DistributedSampler(data, world, r, shuffle=False)]
    assert len(padded) == -(-n // world) * world  # torch's sampler: the reference that repeats items


def test_the_val_loader_of_a_rank_holds_its_shard_only():
    module = GenerativeDataModule(partial(Numbered, n=5), batch_size=2)
    module.trainer = SimpleNamespace(world_size=2, global_rank=1)
    seen = [int(v) for batch in module.val_dataloader() for v in batch["image"][:, 0, 0, 0]]
    assert seen == [1, 3]
    module.trainer = None  # one device: every item in order
    assert [int(v) for b in module.val_dataloader() for v in b["image"][:, 0, 0, 0]] == [0, 1, 2, 3, 4]


class MeanOfIds(pl.LightningModule):
    """Logs the mean item id over the val set as the models log their val metrics, and records what it saw."""

    log_val_means = GenerativeModule.log_val_means

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out, self.layer, self.val_means = out, torch.nn.Linear(1, 1), torch.nn.ModuleDict()

    def validation_step(self, batch, batch_idx):
        ids = batch["image"][:, 0, 0, 0]
        self.log_val_means({"val/id": ids.mean()}, len(ids))
        path = Path(self.out) / f"rank{self.global_rank}.json"
        seen = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(seen + ids.int().tolist()))


@pytest.mark.slow
def test_ddp_validation_scores_each_of_n_items_once(tmp_path):
    # 5 images on 2 gloo ranks: padding would score 6 (item 0 twice), and Lightning's sync_dist mean (integer
    # image counts averaged and truncated) would log 2.5 instead of the mean 2.0.
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    (result,) = trainer.validate(MeanOfIds(str(tmp_path)), GenerativeDataModule(partial(Numbered, n=5),
                                                                               batch_size=2))
    seen = [i for r in (0, 1) for i in json.loads((tmp_path / f"rank{r}.json").read_text())]
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert result["val/id"] == pytest.approx(2.0)
