"""Pre-flight scan: every file is opened and checked in the dataset constructor, before epoch 0.

Training must never start on bad data nor die in DataLoader worker N mid-epoch, so each dataset runs its format's
scanner over *all* its items (all splits) and applies a policy: `on_bad="fail"` raises one `BadDataError` listing
every bad file with its cause; `on_bad="skip"` quarantines them (`dataset.quarantine`) and logs a warning. A
scanner raises `BadFileError(cause)` for a known defect; any other exception it lets through is reported as the
file's cause too, so a reader's misleading message ("cannot find a suitable reader") never stands alone.

Results are memoized per process (and in `memo_dir` when given) under the dataset fingerprint, so building the
train, val and test splits scans the files once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthmed.data.splits import Record
from synthmed.io import atomic_write

log = logging.getLogger(__name__)
POLICIES = ("fail", "skip")
_MAX_PERCENTILE_VOXELS = 1 << 21  # percentiles on a strided subsample above 2M voxels: bounds are approximate anyway
_MEMO: dict[str, list] = {}


class BadFileError(Exception):
    """Raised by a scanner: `cause` says what is wrong, for the user; `path` narrows a series to one file."""

    def __init__(self, cause: str, path: str | None = None) -> None:
        super().__init__(cause)
        self.cause, self.path = cause, path


@dataclass(frozen=True)
class BadFile:
    """One quarantined file (or series) and why."""

    path: str
    cause: str

    def __str__(self) -> str:
        return f"{self.path}: {self.cause}"


class BadDataError(ValueError):
    """The pre-flight check failed; `bad` lists every bad file. Raised before any training step."""

    def __init__(self, message: str, bad: Sequence[BadFile]) -> None:
        super().__init__(message + "".join(f"\n  {b}" for b in bad))
        self.bad = list(bad)


def check_policy(on_bad: str) -> str:
    if on_bad not in POLICIES:
        raise ValueError(f"on_bad must be one of {POLICIES}, got {on_bad!r}")
    return on_bad


def run_preflight(records: Sequence[Record], scan: Callable[[Record], dict], on_bad: str, where: str,
                  key: str, memo_dir: str | os.PathLike | None = None) -> tuple[list[int], list[BadFile], list[dict]]:
    """Scans every record and applies the `on_bad` policy.

    Args:
        records: all items of the dataset (every split).
        scan: `scan(record) -> stats dict`, raising `BadFileError` for a bad item.
        on_bad: "fail" (raise listing all bad files) or "skip" (quarantine them, warn).
        where: the dataset root, named in messages.
        key: memo key (the dataset fingerprint: files, their stamps and the preprocessing settings).
        memo_dir: optional folder where results persist across processes (the disk cache folder).

    Returns:
        Indices of the good records, the quarantine list, and the stats of each good record (aligned).
    """
    check_policy(on_bad)
    results = _recall(key, memo_dir)
    if results is None or len(results) != len(records):
        results = [_scan_one(scan, r) for r in records]
    _remember(key, memo_dir, results)
    good = [i for i, r in enumerate(results) if "bad" not in r]
    bad = [BadFile(r["bad"][0], r["bad"][1]) for r in results if "bad" in r]
    _apply_policy(on_bad, bad, len(records), len(good), where)
    return good, bad, [results[i]["stats"] for i in good]


def _scan_one(scan: Callable[[Record], dict], record: Record) -> dict:
    try:
        return {"stats": scan(record)}
    except BadFileError as e:
        return {"bad": [e.path or record.display, e.cause]}
    except Exception as e:  # an unforeseen defect is still a bad file with a cause, not a crash mid-epoch
        return {"bad": [record.display, f"unreadable ({type(e).__name__}: {e})"]}


_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def _apply_policy(on_bad: str, bad: list[BadFile], n: int, n_good: int, where: str) -> None:
    if not bad:
        return
    if n_good == 0:
        raise BadDataError(f"no usable item under {where}: all {n} failed the pre-flight check", bad)
    if on_bad == "fail":
        raise BadDataError(f"{len(bad)} of {n} item(s) under {where} failed the pre-flight check (on_bad=fail; "
                           "fix or remove them, or set on_bad=skip to train without them)", bad)
    said = (where, tuple(str(b) for b in bad))
    if said in _WARNED:  # every split scans all items: the same news once per process, not once per split
        return
    _WARNED.add(said)
    log.warning("pre-flight: skipping %d of %d item(s) under %s (on_bad=skip; listed in the run's "
                "data/dataset.json):%s", len(bad), n, where, "".join(f"\n  {b}" for b in bad))


def _memo_file(key: str, memo_dir) -> Path | None:
    return Path(memo_dir, f"preflight-{key[:32]}.json") if memo_dir else None


def _recall(key: str, memo_dir) -> list | None:
    path = _memo_file(key, memo_dir)
    if key not in _MEMO and path is not None and path.is_file():
        try:
            _MEMO[key] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # a damaged memo only costs a re-scan
    return _MEMO.get(key)


def _remember(key: str, memo_dir, results: list) -> None:
    _MEMO[key] = results
    path = _memo_file(key, memo_dir)
    if path is not None and not path.is_file():
        atomic_write(path, json.dumps(results))  # concurrent DDP ranks write the same content; the last wins


# ---- checks shared by the format scanners ------------------------------------------------------------------------

def check_file(path: str) -> None:
    """Empty files and gzip/name mismatches (nibabel would only say 'Not a gzipped file' or 'Cannot work out file
    type')."""
    size = os.path.getsize(path)
    if size == 0:
        raise BadFileError("empty file (0 bytes)")
    with open(path, "rb") as f:
        magic = f.read(2)
    named_gz = path.lower().endswith(".gz")
    if named_gz and magic != b"\x1f\x8b":
        raise BadFileError(f"named .gz but not gzip-compressed (starts with {magic!r}, expected b'\\x1f\\x8b'); "
                           "rename it without .gz or compress it")
    if not named_gz and magic == b"\x1f\x8b":
        raise BadFileError("gzip-compressed but not named .gz; rename it (e.g. to .nii.gz)")


def check_spacing(spacing: Sequence[float], affine: np.ndarray | None = None) -> None:
    """Voxel sizes must be finite and > 0, and the affine invertible, or resampling and export break."""
    z = np.asarray(spacing, dtype=np.float64)
    if not np.all(np.isfinite(z)) or np.any(z <= 0):
        raise BadFileError(f"zero, negative or non-finite voxel spacing {tuple(round(float(v), 6) for v in z)} mm")
    if affine is not None:
        a = np.asarray(affine, dtype=np.float64)[:3, :3]
        if not np.all(np.isfinite(a)) or abs(np.linalg.det(a)) < 1e-12:
            raise BadFileError(f"singular or non-finite affine (zero spacing along an axis): {a.tolist()}")


def check_values(data: np.ndarray, percentiles: Sequence[float] | None = None) -> dict:
    """NaN/Inf and constant volumes are rejected: [-1, 1] scaling of them gives NaN or a meaningless image.

    Args:
        data: the image array, any shape, native units.
        percentiles: `[lower, upper]` for percentile (MR) scaling: their values are returned as the stats `p_lo`,
            `p_hi`, and a volume where they coincide (e.g. 99.5 % background) is rejected as near-constant.

    Returns:
        Stats dict (`min`, `max`, and `p_lo`/`p_hi` when percentiles are given).
    """
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        raise BadFileError(f"{n_nan} NaN and {int(data.size - finite.sum() - n_nan)} Inf voxel(s)")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise BadFileError(f"constant image (every voxel = {lo:g}); intensity scaling would divide by zero")
    stats = {"min": lo, "max": hi}
    if percentiles is not None:
        flat = data.reshape(-1)
        step = max(1, flat.size // _MAX_PERCENTILE_VOXELS)
        p_lo, p_hi = (float(v) for v in np.percentile(flat[::step], list(percentiles)))
        if not p_hi > p_lo:
            raise BadFileError(f"near-constant image: the {percentiles[0]}th and {percentiles[1]}th percentiles "
                               f"are both {p_lo:g}; percentile scaling would divide by zero")
        stats.update(p_lo=p_lo, p_hi=p_hi)
    return stats
