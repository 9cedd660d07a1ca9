"""Paired data for image-to-image translation: a datamodule whose reference images are the targets, and paired
NIfTI volumes (e.g. MR and CT of the same subject) from two folders matched by file name or a CSV manifest.

Items carry `image` (the source, e.g. MR) and `target` (e.g. CT) on the same voxel grid, each preprocessed with the
MONAI volume chain of synthmed.data.volume and its own intensity mapping (MR: per-volume percentiles; CT: a fixed
HU window). Both mappings are recorded: `intensity` (source) and `target_intensity`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import NibabelReader
from monai.transforms import Compose, Transform

from synthmed.data.datamodule import GenerativeDataModule
from synthmed.data.file_dataset import LoadSource
from synthmed.data.nifti import SUFFIXES, scan_nifti
from synthmed.data.preflight import BadFileError
from synthmed.data.splits import Record, find_files, read_manifest, to_plain
from synthmed.data.transforms import check_intensity_config, intensity_record, volume_pipeline
from synthmed.data.volume import VolumeDataset

GRID_ATOL_MM = 1e-3  # source and target affines may differ by rounding only: the pair must share one voxel grid


class PairedDataModule(GenerativeDataModule):
    """The generic datamodule for translation data sets (items with `image` = source and `target`).

    What a translator generates are targets, so the reference sets of the generation metrics (FID, ...), of the
    memorization audit and of `synthmed evaluate` are the targets: `images()` returns them; `sources()` the
    sources. Same arguments as GenerativeDataModule.
    """

    @property
    def target_intensity(self) -> dict:
        """The target's native -> [-1, 1] mapping (e.g. the HU window) that translation metrics and exports invert."""
        record = getattr(self.split("train"), "target_intensity", None)
        if not record:
            raise ValueError("the data set has no target_intensity: translation needs items with a `target`")
        return dict(record)

    def images(self, split: str, n: int | None = None) -> torch.Tensor:
        """The first n targets of a split `[n, C, *spatial]` (what a translator's outputs are compared with)."""
        return self._stack(split, n, "target")

    def sources(self, split: str, n: int | None = None) -> torch.Tensor:
        """The first n sources of a split `[n, C_src, *spatial]`."""
        return self._stack(split, n, "image")


class PairLoad(Transform):
    """`{"source": (source path, target path)}` -> `[2, *spatial]`: each side through its own volume chain, stacked
    (channel 0 the source, 1 the target) so cropping, 2D slicing and caching act on both together."""

    def __init__(self, source_chain: list, target_chain: list) -> None:
        self.source_chain, self.target_chain = Compose(source_chain), Compose(target_chain)

    def __call__(self, item: dict):
        source_path, target_path = item["source"]
        source = self.source_chain({"source": source_path})
        target = self.target_chain({"source": target_path})
        if source.shape[1:] != target.shape[1:]:
            raise ValueError(f"{target_path}: preprocessed target shape {list(target.shape[1:])} differs from the "
                             f"source's {list(source.shape[1:])}")
        return torch.cat([source, target])  # a MetaTensor with the source's affine


class PairedNiftiDataset(VolumeDataset):
    """Paired NIfTI volumes (source and target of one subject on the same voxel grid, e.g. registered MR and CT as
    in SynthRAD) for 3D translation or 2D translation on slices.

    `root` is a folder holding two sub-folders `source_dir` and `target_dir` whose files are matched by their path
    relative to the sub-folder (suffix .nii/.nii.gz ignored), or a CSV manifest with `source_column` and
    `target_column` paths (relative to the CSV) plus the optional `label`, covariate and `split` columns of
    NiftiDataset. Splits are drawn per pair. Augmentation (off by default) acts on the stacked pair, so spatial
    transforms stay aligned; intensity augmentations would change the target too.

    Items: `{"image": source [1, *spatial], "target": [1, *spatial], "id": "paired_nifti-<split>-<index>[-s<slice>]",
    "label"?, "attrs"?}`, float32 in [-1, 1].

    Args:
        split, root: see NiftiDataset.
        intensity: the source's mapping, `{"mode": "mr" | "ct", "window", "percentiles"}` (MR: percentiles).
        target_intensity: the target's mapping, same keys (CT: `mode: ct` and the HU window).
        source_dir, target_dir: the two sub-folders of a folder `root`.
        source_column, target_column: the manifest's path columns.
        **kwargs: the other VolumeDataset / FileDataset arguments (spatial_dims, size, spacing, slice_axis, ...).
    """

    format_name = "paired_nifti"

    def __init__(self, split: str, root, *, intensity: dict | None = None, target_intensity: dict | None = None,
                 source_dir: str = "source", target_dir: str = "target", source_column: str = "source",
                 target_column: str = "target", **kwargs) -> None:
        self.target_config = check_intensity_config(to_plain(target_intensity) or {"mode": "ct"})
        self.pairing = {"source_dir": str(source_dir), "target_dir": str(target_dir),
                        "source_column": str(source_column), "target_column": str(target_column)}
        self.target_intensity: dict = {}
        super().__init__(split, root, intensity=intensity, **kwargs)

    def _discover(self) -> tuple[list[Record], list[str] | None]:
        if self.root.is_file():
            if self.root.suffix.lower() != ".csv":
                raise ValueError(f"root {self.root} is a file; expected a folder with {self.pairing['source_dir']}/ "
                                 f"and {self.pairing['target_dir']}/ or a .csv manifest")
            sources, classes = read_manifest(self.root, self.pairing["source_column"], self.label_column,
                                             self.attr_columns)
            targets, _ = read_manifest(self.root, self.pairing["target_column"], None, ())
            return [Record((s.source, t.source), s.label, s.attrs, s.split) for s, t in zip(sources, targets)], \
                classes
        return [Record(pair) for pair in match_folders(self.root / self.pairing["source_dir"],
                                                         self.root / self.pairing["target_dir"])], None

    def _settings(self) -> dict:
        return {**super()._settings(), "target_intensity": self.target_config, "pairing": self.pairing}

    def _scan(self, record: Record) -> dict:
        source, target = record.source
        pct = lambda cfg: cfg["percentiles"] if cfg["mode"] == "mr" else None
        stats = _scan_side(source, self.spatial_dims, self.volume_index, pct(self.intensity_config))
        target_stats = _scan_side(target, self.spatial_dims, self.volume_index, pct(self.target_config))
        _check_same_grid(source, target)
        return {**stats, "target": target_stats}

    def _intensity(self, stats: list[dict]) -> dict:
        self.target_intensity = intensity_record(self.target_config, [s["target"] for s in stats])
        return intensity_record(self.intensity_config, stats)

    def _pipeline(self) -> list:
        chain = lambda cfg: volume_pipeline(LoadSource(NibabelReader()), self.spacing, self._volume_size(), cfg,
                                            self.volume_index)
        return [PairLoad(chain(self.intensity_config), chain(self.target_config))]

    def item(self, i: int, augment: bool = True) -> dict:
        item = super().item(i, augment)
        pair = item.pop("image")
        return {"image": pair[:1].contiguous(), "target": pair[1:].contiguous(), **item}


def match_folders(source_dir: Path, target_dir: Path) -> list[tuple[str, str]]:
    """(source, target) file pairs of two folders, matched by relative path without the NIfTI suffix."""
    for key, folder in (("source_dir", source_dir), ("target_dir", target_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder (dataset {key}: root must hold the two sub-folders)")
    sides = [{_stem(os.path.relpath(f, folder)): f for f in find_files(folder, SUFFIXES)}
             for folder in (source_dir, target_dir)]
    unmatched = [(folder, sorted(set(mine) - set(other))) for folder, mine, other in
                 ((source_dir, sides[0], sides[1]), (target_dir, sides[1], sides[0]))]
    for folder, names in unmatched:
        if names:
            raise ValueError(f"{len(names)} file(s) in {folder} have no partner of the same name in the other "
                             f"folder: {names[:5]}")
    return [(sides[0][k], sides[1][k]) for k in sorted(sides[0])]


def _stem(name: str) -> str:
    low = name.lower()
    return name[: -len(".nii.gz")] if low.endswith(".nii.gz") else name[: -len(".nii")] if low.endswith(".nii") \
        else name


def _scan_side(path: str, spatial_dims: int, volume_index: int | None, percentiles) -> dict:
    """scan_nifti, with the failing file named (a pair's record would otherwise be named by its folder)."""
    try:
        return scan_nifti(path, spatial_dims, volume_index, percentiles)
    except BadFileError as e:
        raise BadFileError(e.cause, e.path or path) from None


def _check_same_grid(source: str, target: str) -> None:
    """A pair must share its voxel grid (shape and affine): translation learns voxel-to-voxel correspondences."""
    a, b = nib.load(source), nib.load(target)
    if a.shape[:3] != b.shape[:3] or not np.allclose(a.affine, b.affine, atol=GRID_ATOL_MM):
        raise BadFileError(f"grid differs from its source {os.path.basename(source)} (shape {b.shape[:3]} vs "
                           f"{a.shape[:3]}, or affine): register and resample the pair onto one grid first", target)
