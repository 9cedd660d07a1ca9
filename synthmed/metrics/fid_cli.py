"""``synthmed fid DIR_A DIR_B``: a drop-in for ``python -m pytorch_fid DIR_A DIR_B``.

Same arguments, same folder formats and image reading (pytorch-fid's own dataset: PIL ``convert('RGB')`` then
``ToTensor``), same network and weights file, so for the same images the value equals pytorch-fid's. Differences:
nothing is downloaded (a missing weights file is an error naming where it is expected), the Frechet distance uses
synthmed's eigen-decomposition square root (much faster at 2048 dims), and ``--ref-cache DIR`` reuses the features
of the second path (the reference set, pytorch-fid's ``mu2``) across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import torch
import torchvision.transforms as TF
from pytorch_fid.fid_score import IMAGE_EXTENSIONS, ImagePathDataset
from tqdm.auto import tqdm

from synthmed.metrics import fid as fidlib
from synthmed.metrics.cache import ReferenceCache
from synthmed.metrics.inception import (
    OFFICIAL_SHA256_PREFIX,
    VALID_DIMS,
    WEIGHTS_FILE,
    InceptionExtractor,
    is_official,
    resolve_weights,
)

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """pytorch-fid's arguments plus ``--weights`` and ``--ref-cache``."""
    p = argparse.ArgumentParser(prog="synthmed fid", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="FID between two image folders or .npz statistics (pytorch-fid compatible)")
    p.add_argument("--batch-size", type=int, default=50, help="Batch size to use")
    p.add_argument("--num-workers", type=int, help="Data loading processes; defaults to min(8, num_cpus)")
    p.add_argument("--device", type=str, default=None, help="Device to use, like cuda, cuda:0 or cpu")
    p.add_argument("--dims", type=int, default=2048, choices=list(VALID_DIMS),
                   help="Dimensionality of Inception features to use (2048 = pool3, the standard)")
    p.add_argument("--save-stats", action="store_true",
                   help="Write an .npz of the first path's statistics to the second path")
    p.add_argument("--weights", type=str, default=None,
                   help="Inception weights file; default $TORCH_HOME/hub/checkpoints/" + WEIGHTS_FILE)
    p.add_argument("--ref-cache", type=str, default=None,
                   help="Folder caching the second path's features, keyed by its files and the extractor")
    p.add_argument("path", type=str, nargs=2, help="Paths to image folders or to .npz statistic files")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; prints ``FID:  <value>`` (or writes the stats file) and returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.save_stats or any(not p.endswith(".npz") for p in args.path):  # images: the network is needed
            args.weights = str(checked_weights(args.weights))
        if args.save_stats:
            save_folder_stats(args.path[0], args.path[1], dims=args.dims, batch_size=args.batch_size,
                              device=args.device, num_workers=args.num_workers, weights=args.weights)
            return 0
        value = fid_of_paths(args.path, dims=args.dims, batch_size=args.batch_size, device=args.device,
                             num_workers=args.num_workers, weights=args.weights, ref_cache=args.ref_cache)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"synthmed fid: error: {err}", file=sys.stderr)
        return 2
    print("FID: ", value)  # pytorch-fid's exact output format
    return 0


def checked_weights(weights: str | None) -> Path:
    """The weights file (an error naming `--weights` when missing); a warning when it is not pytorch-fid's file,
    whose FIDs are then not comparable to published ones (its sha256 is recorded either way)."""
    path = resolve_weights(weights, "--weights")
    if not is_official(path):
        print(f"synthmed fid: warning: {path} is not the official FID Inception weights file (its sha256 does not "
              f"start with {OFFICIAL_SHA256_PREFIX}, as the official name says): this FID is not comparable to "
              f"published or pytorch-fid values", file=sys.stderr)
    return path


def fid_of_paths(paths: list[str], dims: int = 2048, batch_size: int = 50, device: str | None = None,
                 num_workers: int | None = None, weights: str | None = None, ref_cache: str | None = None) -> float:
    """FID between two image folders and/or ``.npz`` statistics files.

    Args:
        paths: two folders (pytorch-fid's IMAGE_EXTENSIONS) or ``.npz`` files with ``mu``/``sigma``.
        ref_cache: folder caching the second path's features (None: no cache).
    """
    if len(paths) != 2:
        raise ValueError(f"paths: expected two paths, got {len(paths)}")
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"path: {p} does not exist")
    folders = [p for p in paths if not p.endswith(".npz")]
    extractor = InceptionExtractor(weights, dims, _device(device)) if folders else None  # two .npz need no network
    loader = dict(batch_size=batch_size, num_workers=_num_workers(num_workers))
    cache = ReferenceCache(ref_cache) if ref_cache else None
    a = _path_stats(paths[0], extractor, loader, cache=None)
    b = _path_stats(paths[1], extractor, loader, cache=cache)
    if isinstance(a, fidlib.FeatureSet) and isinstance(b, fidlib.FeatureSet):
        return fidlib.fid_values(a, b)[fidlib.names.FID]  # features on both sides allow the exact low-rank route
    return fidlib.frechet_distance(*_stats(a), *_stats(b))


def save_folder_stats(folder: str, out: str, dims: int = 2048, batch_size: int = 50, device: str | None = None,
                      num_workers: int | None = None, weights: str | None = None) -> None:
    """``--save-stats``: the folder's (mu, sigma) to ``out`` in pytorch-fid's .npz format (+ provenance)."""
    if not os.path.exists(folder):
        raise FileNotFoundError(f"path: {folder} does not exist")
    if os.path.exists(out):
        raise FileExistsError(f"path: output file {out} already exists")
    extractor = InceptionExtractor(weights, dims, _device(device))
    print(f"Saving statistics for {folder}")
    feats = folder_features(folder, extractor, batch_size, _num_workers(num_workers))
    fidlib.save_stats(out, *fidlib.feature_stats(feats), provenance=extractor.provenance)


def folder_files(folder: str) -> list[Path]:
    """Image files of a folder exactly as pytorch-fid lists them (its extensions, non-recursive, sorted)."""
    path = Path(folder)
    return sorted(f for ext in IMAGE_EXTENSIONS for f in path.glob(f"*.{ext}"))


def folder_features(folder: str, extractor: InceptionExtractor, batch_size: int = 50, num_workers: int = 0,
                    progress: bool = True) -> torch.Tensor:
    """Features ``[N, dims]`` of a folder's images, read by pytorch-fid's own dataset class."""
    files = folder_files(folder)
    if len(files) < 2:
        raise ValueError(f"path: {folder} holds {len(files)} images with extensions {sorted(IMAGE_EXTENSIONS)}; "
                         "need >= 2")
    data = ImagePathDataset(files, transforms=TF.ToTensor())
    loader = torch.utils.data.DataLoader(data, batch_size=min(batch_size, len(files)), num_workers=num_workers)
    feats = [extractor.forward_unit(batch) for batch in tqdm(loader, desc=Path(folder).name, disable=not progress)]
    return torch.cat(feats)


def _path_stats(path: str, extractor: InceptionExtractor | None, loader: dict, cache: ReferenceCache | None):
    """A FeatureSet for a folder (through the cache when given), or (mu, sigma) for an .npz."""
    if path.endswith(".npz"):
        mu, sigma, prov = fidlib.load_stats(path)
        if extractor is not None:
            _warn_mismatch(path, prov, extractor.provenance)
        return mu, sigma
    if cache is None:
        return fidlib.FeatureSet({fidlib.IMAGE_PLANE: folder_features(path, extractor, **loader).unsqueeze(1)})
    fields = {"folder": str(Path(path).resolve()), "files": _files_digest(path), **extractor.provenance}
    key = cache.key(fields)
    hit = cache.load(key)
    if hit is not None:
        return fidlib.FeatureSet.from_arrays(hit)
    feats = fidlib.FeatureSet({fidlib.IMAGE_PLANE: folder_features(path, extractor, **loader).unsqueeze(1)})
    cache.save(key, feats.to_arrays(), fields)
    return feats


def _stats(x):
    return x.stats(fidlib.IMAGE_PLANE) if isinstance(x, fidlib.FeatureSet) else x


def _files_digest(folder: str) -> str:
    """Names, sizes and mtimes of the folder's images: any change to the set invalidates the cache entry."""
    entries = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder_files(folder)]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _warn_mismatch(path: str, stored: dict[str, str], current: dict[str, str]) -> None:
    for k in ("weights_sha256", "dims"):
        if k in stored and stored[k] != current[k]:
            log.warning("%s was computed with %s=%s, this run uses %s: the FID is not comparable",
                        path, k, stored[k], current[k])


def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _num_workers(num_workers: int | None) -> int:
    """pytorch-fid's default: min(8, available CPUs)."""
    if num_workers is not None:
        return num_workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cpus)


if __name__ == "__main__":
    sys.exit(main())
