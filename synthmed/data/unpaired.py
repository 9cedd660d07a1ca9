"""Unpaired data for translation between two domains (MR from one study, CT from another; two scanners): two data
sets of any supported format, one per domain, given as two roots or as one CSV manifest with a domain column.

Items carry `image` (domain A, the source) and `target` (domain B) from *different* subjects, so the data set says
`paired_truth = False`: translators then skip the metrics against a paired target (HU MAE, ...) and the generation
metrics (FID, in-domain FD) compare translations with the real domain-B images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from synthmed.io import atomic_write


class UnpairedDataset(Dataset):
    """Two domains side by side. Item i is `image` = domain-A item `i mod n_A` and `target` = domain-B item
    `perm(i mod n_B)` under a fixed seeded permutation, for `max(n_A, n_B)` items, so every image of both domains
    is seen once per epoch and which B image meets which A image carries no anatomy.

    Args:
        split: "train" | "val" | "test" (each side splits its own files as its format does).
        source: partial data set of domain A, called with `split` (and `root` in manifest mode), any format
            (NiftiDataset, ImageFolderDataset, DICOM, ...).
        target: partial data set of domain B, likewise.
        manifest: None (each side has its own `root`), or a CSV with a `domain_column` whose value names each row's
            domain; it is cut into one manifest per domain (relative paths resolved) under `cache_dir`.
        domain_column: the manifest's domain column.
        domains: the two values of `domain_column` for A and B, e.g. [mr, ct].
        cache_dir: where the per-domain manifests are written (manifest mode only).
        seed: seed of the B permutation.

    Items: `{"image": [C, *spatial], "target": [C_B, *spatial], "id": "<A id>|<B id>", "label"?, "attrs"?}` (label
    and attrs of the A item; `target_label` when the B item has a label).
    """

    paired_truth = False  # a target is another subject's image: no voxel-wise truth

    def __init__(self, split: str, source: Callable[..., Dataset], target: Callable[..., Dataset],
                 manifest: str | None = None, domain_column: str = "domain", domains=("A", "B"),
                 cache_dir: str | None = None, seed: int = 0) -> None:
        if manifest is not None:
            roots = split_manifest(Path(manifest), domain_column, tuple(domains), cache_dir)
            self.source, self.target = source(split=split, root=roots[0]), target(split=split, root=roots[1])
        else:
            for side, make in (("source", source), ("target", target)):
                if getattr(make, "keywords", {}).get("root", "") is None:
                    raise ValueError(f"dataset=unpaired reads two collections: pass dataset.source_root=<folder or "
                                     f"CSV> and dataset.target_root=<folder or CSV> (dataset.{side}_root is not "
                                     "set), or dataset.manifest=<CSV with a domain column>")
            self.source, self.target = source(split=split), target(split=split)
        for side, ds in (("source", self.source), ("target", self.target)):
            if len(ds) == 0:
                raise ValueError(f"dataset.datamodule.dataset.{side}: split {split!r} has no items")
        self.split = split
        self.spatial_dims, self.channels = self.source.spatial_dims, self.source.channels
        digest = hashlib.sha256(f"{self.source.fingerprint}|{self.target.fingerprint}|{seed}".encode())
        self.fingerprint = digest.hexdigest()
        self.intensity = dict(getattr(self.source, "intensity", {}))
        self.target_intensity = dict(getattr(self.target, "intensity", {}))
        self.geometry = getattr(self.target, "geometry", None)  # what a translator writes is domain B
        self._perm = np.random.default_rng([seed, len(self.target)]).permutation(len(self.target))

    def __len__(self) -> int:
        return max(len(self.source), len(self.target))

    def item(self, i: int, augment: bool = True) -> dict:
        a, b = (self._get(ds, j, augment) for ds, j in ((self.source, i % len(self.source)),
                                                        (self.target, int(self._perm[i % len(self.target)]))))
        out = {"image": a["image"], "target": b["image"], "id": f"{a.get('id', i)}|{b.get('id', i)}"}
        out.update({k: a[k] for k in ("label", "attrs") if k in a})
        if "label" in b:
            out["target_label"] = b["label"]
        return out

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        return self.item(i % len(self))

    def target_labels(self) -> np.ndarray:
        """Label of each item's `target` (int64 [n]); a ValueError when domain B has no labels."""
        labels = [self.item(i, augment=False).get("target_label") for i in range(len(self))]
        if any(v is None for v in labels):
            raise ValueError("domain B items carry no label (label_column): lesion readers need labelled targets")
        return np.asarray(labels, np.int64)

    @staticmethod
    def _get(ds: Dataset, j: int, augment: bool) -> dict:
        return ds.item(j, augment=augment) if hasattr(ds, "item") else ds[j]


def split_manifest(manifest: Path, column: str, domains: tuple[str, ...], cache_dir: str | None) -> list[str]:
    """One CSV per domain from a manifest with a domain column (paths made absolute); returns their paths."""
    if len(domains) != 2 or domains[0] == domains[1]:
        raise ValueError(f"dataset.datamodule.dataset.domains must be two different values, got {list(domains)}")
    if not manifest.is_file():
        raise FileNotFoundError(f"dataset.manifest: {manifest} is not a file")
    if cache_dir is None:
        raise ValueError("dataset.datamodule.dataset.cache_dir must be set to cut a manifest into domains")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0]:
        raise ValueError(f"manifest {manifest} has no column {column!r} (domain_column) or no rows")
    found = sorted({r[column] for r in rows})
    missing = [d for d in domains if d not in found]
    if missing:
        raise ValueError(f"manifest {manifest}: no row with {column} in {missing} (values found: {found[:10]})")
    key = hashlib.sha256(manifest.read_bytes() + str(manifest.resolve()).encode()).hexdigest()[:16]
    out = []
    for domain in domains:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            if row[column] == domain:
                writer.writerow({k: v if k == column else _absolute(v, manifest.parent) for k, v in row.items()})
        out.append(str(atomic_write(Path(cache_dir).expanduser().resolve() / "unpaired" / f"{key}-{domain}.csv",
                                    buf.getvalue())))
    return out


def _absolute(value: str, base: Path) -> str:
    """A relative path that exists next to the manifest -> absolute; any other cell unchanged."""
    if value and not os.path.isabs(value) and (base / value).exists():
        return str((base / value).resolve())
    return value



