"""The machinery every on-disk format shares: discover -> fingerprint -> pre-flight -> split -> cache -> items.

A format subclasses `FileDataset` and fills in four hooks: `_discover` (records of every split), `_settings`
(preprocessing that changes pixels, for the fingerprint), `_scan` (its pre-flight check) and `_transforms` (the
deterministic MONAI chain from `{"source": ...}` to a `[C, *spatial]` tensor in [-1, 1]).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, MetaTensor, PersistentDataset
from monai.data import Dataset as MonaiDataset
from monai.transforms import Compose, EnsureChannelFirst, Transform
from monai.transforms.io.array import switch_endianness
from monai.utils import ensure_tuple

from synthmed.data.preflight import check_policy, run_preflight
from synthmed.data.splits import Record, check_root, check_split, fingerprint, split_names, to_plain
from synthmed.data.transforms import build_augment

CACHE_MODES = ("none", "memory", "disk")


class LoadSource(Transform):
    """`{"source": path or files}` -> channel-first MetaTensor `[C, *spatial]` with its affine, via one MONAI reader.

    This is `monai.transforms.LoadImage(reader, image_only=True, ensure_channel_first=True)` minus the reader
    search: LoadImage constructs every registered reader (slow, and noisy about optional GPU codecs) and, when its
    reader fails, reports "cannot find a suitable reader"; here a read error surfaces as itself. A `Transform`
    subclass, so Cache/PersistentDataset cache everything after it.
    """

    def __init__(self, reader) -> None:
        self.reader = reader

    def __call__(self, item: dict) -> MetaTensor:
        files = [str(f) for f in ensure_tuple(item["source"])]
        array, meta = self.reader.get_data(self.reader.read(files if len(files) > 1 else files[0]))
        meta = switch_endianness(meta, "<")  # big-endian header arrays (e.g. '>i2' NIfTI) break torch
        img = MetaTensor.ensure_torch_and_prune_meta(np.asarray(array, dtype=np.float32), meta)
        return EnsureChannelFirst()(img, meta_dict=meta)


class FileDataset(torch.utils.data.Dataset, ABC):
    """Base of the file formats (see the module docstring for the hooks).

    Args:
        split: "train" | "val" | "test".
        root: a folder, or a CSV manifest (columns `image`, optional `label`, covariates, `split`).
        spatial_dims: 2 or 3, the dimensionality of the items.
        channels: channels of the items.
        size: spatial size of the items (`spatial_dims` ints), or None to keep the native size where allowed.
        label_column: manifest column with the class label (absent column = no labels).
        attr_columns: manifest columns copied into `attrs` (numeric covariates).
        val_fraction: share of records drawn into val when no manifest split column exists.
        test_fraction: share drawn into test, likewise.
        split_seed: seed of that draw; kept apart from the training seed so seed sweeps share one split.
        on_bad: "fail" | "skip", the pre-flight policy.
        cache: "none" | "memory" (MONAI CacheDataset) | "disk" (MONAI PersistentDataset under `cache_dir`).
        cache_dir: folder for the disk cache and the persisted pre-flight results.
        augment: dict of augmentation settings (see `transforms.build_augment`), train split only.
        seed: augmentation seed.
        hash_contents: fingerprint file contents instead of sizes and mtimes (slower; survives copying).

    Attributes:
        spatial_dims, channels, fingerprint, intensity: the dataset interface (see DESIGN.md).
        records: this split's records; quarantine: list of `BadFile` (all splits); classes: class names or None.
    """

    format_name = "file"

    def __init__(self, split: str, root, *, spatial_dims: int, channels: int, size=None,
                 label_column: str | None = "label", attr_columns=(), val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 0, on_bad: str = "fail", cache: str = "none",
                 cache_dir=None, augment: dict | None = None, seed: int = 0, hash_contents: bool = False) -> None:
        check_split(split)
        self.split, self.on_bad = split, check_policy(on_bad)
        self.spatial_dims, self.channels = _check_choice("spatial_dims", spatial_dims, (2, 3)), int(channels)
        self.size = None if size is None else [int(s) for s in to_plain(size)]
        self.label_column, self.attr_columns = label_column, list(to_plain(attr_columns) or [])
        self.cache, self.cache_dir = _check_cache(cache, cache_dir)
        self._check_args()
        self._augment = build_augment(self.spatial_dims, to_plain(augment), seed) if split == "train" else None
        self.root = check_root(root)
        all_records, self.classes = self._discover()
        self.fingerprint = fingerprint(self._stamped_files(all_records), self._all_settings(
            val_fraction, test_fraction, split_seed), hash_contents)
        good, self.quarantine, stats = run_preflight(all_records, self._scan, on_bad, str(self.root),
                                                     self.fingerprint, self._memo_dir())
        self.good_records = [all_records[i] for i in good]  # all splits: reference geometry, intensity stats
        self.intensity = self._intensity(stats)
        names = split_names(self.good_records, val_fraction, test_fraction, split_seed, str(self.root))
        self.records = [r for r, name in zip(self.good_records, names) if name == split]
        if not self.records:
            raise ValueError(f"split {split!r} of {self.root} has no usable item ({len(good)} usable of "
                             f"{len(all_records)} in all splits); add data, fix the manifest's split column or "
                             "change val_fraction/test_fraction")
        self._images = self._wrap_cache([{"source": r.source} for r in self.records])
        self._index = self._build_index()

    # ---- hooks ---------------------------------------------------------------------------------------------------

    def _check_args(self) -> None:
        """Format-specific argument checks (raise ValueError naming the argument)."""

    @abstractmethod
    def _discover(self) -> tuple[list[Record], list[str] | None]:
        """The files of the data set and, from a manifest, its split column (or None)."""

    def _settings(self) -> dict:
        return {}

    @abstractmethod
    def _scan(self, record: Record) -> dict:
        """Per-file pre-flight facts (shape, spacing, intensity stats); raise BadFileError for a bad file."""

    @abstractmethod
    def _transforms(self) -> list:
        """The MONAI chain that turns a record into an item image in [-1, 1]."""

    @abstractmethod
    def _intensity(self, stats: list[dict]) -> dict:
        """The native -> [-1, 1] mapping record, from the scans of all usable files."""

    def _build_index(self) -> list[tuple[int, int | None]]:
        """(record index, part) per item; part is a slice index for 2D-from-3D, else None."""
        return [(i, None) for i in range(len(self.records))]

    def _select(self, image: torch.Tensor, part: int | None) -> torch.Tensor:
        return image

    # ---- shared --------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict:
        return self.item(i)

    def item(self, i: int, augment: bool = True) -> dict:
        """Item `i`: `image` `[C, H, W]` or `[C, H, W, D]` float32 in [-1, 1], `id`, optional `label`/`attrs`.

        `augment=False` leaves out the training split's random augmentation: reference images for metrics.
        """
        rec_i, part = self._index[i]
        image = self._select(self.load(rec_i), part)
        if augment and self._augment is not None:
            image = self._augment(image)
        record = self.records[rec_i]
        item = {"image": image.float().contiguous(), "id": self._item_id(rec_i, part)}
        if record.label is not None:
            item["label"] = int(record.label)
        if record.attrs:
            item["attrs"] = dict(record.attrs)
        return item

    def covariates(self) -> dict[str, np.ndarray]:
        """Per-item `label` and each `attrs` key that every item has, `[n]` each, from the records alone (no image
        is loaded)."""
        records = [self.records[rec_i] for rec_i, _ in self._index]
        out = {}
        if records and all(r.label is not None for r in records):
            out["label"] = np.array([r.label for r in records], dtype=np.int64)
        shared = set.intersection(*(set(r.attrs) for r in records)) if records else set()
        return out | {k: np.array([r.attrs[k] for r in records]) for k in sorted(shared)}

    def load(self, rec_i: int) -> torch.Tensor:
        """The preprocessed (cached) image of record `rec_i`, `[C, *spatial]` in [-1, 1], before augmentation."""
        try:
            return self._images[rec_i]
        except Exception as e:  # passed the pre-flight check, so the file changed under us: say which one
            raise RuntimeError(f"{self.format_name}: loading {self.records[rec_i].display} failed although it "
                               f"passed the pre-flight check (modified during training?): {e}") from e

    def _item_id(self, rec_i: int, part: int | None) -> str:
        """Non-identifying: format, split and position only, never a path or header field."""
        suffix = "" if part is None else f"-s{part:04d}"
        return f"{self.format_name}-{self.split}-{rec_i:05d}{suffix}"

    def _stamped_files(self, records: list[Record]) -> list[str]:
        files = [f for r in records for f in r.files]
        return files + ([str(self.root)] if self.root.is_file() else [])  # a manifest's labels/splits count too

    def _all_settings(self, val_fraction: float, test_fraction: float, split_seed: int) -> dict:
        return {"format": self.format_name, "spatial_dims": self.spatial_dims, "channels": self.channels,
                "size": self.size, "label_column": self.label_column, "attr_columns": self.attr_columns,
                "on_bad": self.on_bad, "val_fraction": val_fraction, "test_fraction": test_fraction,
                "split_seed": split_seed, **self._settings()}

    def _memo_dir(self) -> str | None:
        return str(self.cache_dir) if self.cache == "disk" else None

    def _wrap_cache(self, items: list[dict]):
        transform = Compose(self._transforms())
        if self.cache == "memory":
            return CacheDataset(items, transform, num_workers=1, progress=False)
        if self.cache == "disk":  # one folder per fingerprint: changed files or settings never hit a stale entry
            folder = Path(self.cache_dir, f"{self.format_name}-{self.fingerprint[:16]}")
            return PersistentDataset(items, transform, cache_dir=folder)
        return MonaiDataset(items, transform)


def _check_choice(name: str, value, choices: tuple):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_cache(cache: str, cache_dir) -> tuple[str, Path | None]:
    _check_choice("cache", cache, CACHE_MODES)
    if cache == "disk" and not cache_dir:
        raise ValueError("cache=disk needs cache_dir (a folder for the preprocessed items)")
    return cache, (Path(str(cache_dir)).expanduser() if cache_dir else None)
