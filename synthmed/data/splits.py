"""Records, CSV manifests, deterministic train/val/test splits and dataset fingerprints.

A *record* is one source of one item (a file, or the files of one DICOM series) with its optional label,
covariates and manifest split. Splits are drawn per record (per volume or series, never per slice), so the slices
of one subject can never leak from train into val or test.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthmed.io import file_sha256 as sha256_of_file

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One source of one dataset item.

    Attributes:
        source: a file path, or a tuple of file paths (the slices of a DICOM series).
        label: integer class, or None.
        attrs: numeric covariates from the manifest (e.g. age, sex), possibly empty.
        split: "train" | "val" | "test" from a manifest `split` column, or None (then drawn by `assign_splits`).
    """

    source: str | tuple[str, ...]
    label: int | None = None
    attrs: dict = field(default_factory=dict)
    split: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        return self.source if isinstance(self.source, tuple) else (self.source,)

    @property
    def display(self) -> str:
        """What error messages name: the file, or the folder of a series with its slice count."""
        if isinstance(self.source, tuple) and len(self.source) > 1:
            return f"{os.path.dirname(self.source[0])} ({len(self.source)} files)"
        return self.files[0]


def to_plain(obj):
    """OmegaConf containers (what Hydra passes) -> plain dict/list, so settings hash and compare as JSON."""
    if hasattr(obj, "items") and callable(obj.items):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "ListConfig":
        return [to_plain(v) for v in obj]
    return obj


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def check_root(root) -> Path:
    """The configured `root` as a Path; a clear error when it is missing or unset."""
    if root is None or str(root) in ("", "???"):
        raise ValueError("dataset root is not set: pass dataset.root=<folder or CSV manifest>")
    path = Path(os.path.expanduser(str(root)))
    if not path.exists():
        raise FileNotFoundError(f"dataset root {path} does not exist (config key dataset.root)")
    return path


def find_files(root: Path, patterns: tuple[str, ...]) -> list[str]:
    """Sorted files under `root` (recursive) whose lower-cased name ends with one of `patterns`; hidden skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and f.lower().endswith(patterns)]
    if not found:
        raise FileNotFoundError(f"no {'/'.join(patterns)} files found under {root}")
    return sorted(found)


def read_manifest(csv_path: Path, image_column: str = "image", label_column: str | None = "label",
                  attr_columns=(), split_column: str = "split") -> tuple[list[Record], list[str] | None]:
    """Reads a CSV manifest: one row per item; relative image paths are relative to the CSV's folder.

    Args:
        csv_path: the manifest.
        image_column: column holding the image path (a file, or a folder for a DICOM series).
        label_column: optional class column (int, or strings mapped to sorted class indices); None = no labels.
        attr_columns: numeric covariate columns copied into `attrs`.
        split_column: optional column with train/val/test per row.

    Returns:
        The records, and the class names when labels were strings (else None).
    """
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"manifest {csv_path} has no rows")
    columns = rows[0].keys()
    for col in [image_column, *attr_columns]:
        if col not in columns:
            raise ValueError(f"manifest {csv_path} has no column {col!r} (columns: {sorted(columns)})")
    use_label = label_column is not None and label_column in columns
    labels, classes = (_parse_labels([r[label_column] for r in rows], csv_path, label_column) if use_label
                       else ([None] * len(rows), None))
    attrs = {c: _numbers([r[c] for r in rows], csv_path, c) for c in attr_columns}
    records = []
    for i, (row, label) in enumerate(zip(rows, labels)):
        path = Path(os.path.expanduser(row[image_column]))
        split = (row.get(split_column) or "").strip() or None  # a blank cell is "no split given"
        if split is not None and split not in SPLITS:
            raise ValueError(f"manifest {csv_path} row {i + 2}: {split_column}={split!r}, expected one of {SPLITS}")
        records.append(Record(str(path if path.is_absolute() else csv_path.parent / path), label,
                              {c: attrs[c][i] for c in attr_columns}, split))
    return records, classes


def _parse_labels(values: list[str], csv_path: Path, column: str) -> tuple[list[int], list[str] | None]:
    """Integer labels stay as they are; any non-integer value turns the column into sorted class names."""
    blank = [i + 2 for i, v in enumerate(values) if not v.strip()]
    if blank:
        raise ValueError(f"manifest {csv_path}: column {column!r} is empty on row(s) {blank[:10]}; every row needs "
                         "a label (or drop the column)")
    try:
        return [int(v) for v in values], None
    except ValueError:
        classes = sorted(set(values))
        return [classes.index(v) for v in values], classes


def _numbers(values: list[str], csv_path: Path, column: str) -> list[int] | list[float]:
    """A numeric covariate column: all ints when every cell is an integer, else all floats (one dtype per batch)."""
    numbers = []
    for row, value in enumerate(values):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"manifest {csv_path} row {row + 2}: column {column!r} = {value!r} is not a number "
                             "(covariates must be numeric, e.g. sex as 0/1)") from None
        if not math.isfinite(number):
            raise ValueError(f"manifest {csv_path} row {row + 2}: column {column!r} is not finite ({value!r})")
        numbers.append(number)
    if all(n.is_integer() and "." not in v for n, v in zip(numbers, values)):
        return [int(n) for n in numbers]
    return numbers


def assign_splits(n: int, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """A seeded split of `n` sorted records: the same list and seed always give the same split.

    Each split gets at least one record when its fraction is > 0, so val and test are never silently empty.

    Returns:
        `n` split names, aligned with the sorted records.
    """
    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{key} must be in [0, 1), got {frac}")
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} usable file(s) cannot fill train + val ({n_val}) + test ({n_test}): need at least "
                         f"{n_val + n_test + 1} (or lower val_fraction/test_fraction, or give a manifest split column)")
    order = np.random.default_rng(seed).permutation(n)
    names = ["train"] * n
    for i in order[:n_val]:
        names[i] = "val"
    for i in order[n_val:n_val + n_test]:
        names[i] = "test"
    return names


def split_names(records: list[Record], val_fraction: float, test_fraction: float, seed: int,
                where: str) -> list[str]:
    """The split of every record: a manifest's `split` column when every row has one, else `assign_splits`.

    Called with the records that passed the pre-flight check, so with `on_bad=skip` every split still gets a
    usable file (a quarantined file changes the draw, as it changes the fingerprint).
    """
    if all(r.split is not None for r in records):
        return [r.split for r in records]
    if any(r.split is not None for r in records):
        raise ValueError(f"manifest {where}: the split column is empty on some rows; fill it on every row or drop it")
    return assign_splits(len(records), val_fraction, test_fraction, seed)


def fingerprint(files: list[str], settings: dict, hash_contents: bool = False) -> str:
    """SHA-256 over every file (name, size, mtime or content hash) and the preprocessing settings.

    Paths enter relative to their common folder, so the same data moved elsewhere keeps its fingerprint when
    `hash_contents` is set (mtimes change on copy). Settings must be JSON-serializable.
    """
    h = hashlib.sha256()
    base = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
    for path in sorted(files):
        h.update(f"{os.path.relpath(path, base)}\0{_stamp(path, hash_contents)}\n".encode())
    h.update(json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str).encode())
    return h.hexdigest()


def _stamp(path: str, hash_contents: bool) -> str:
    """Size and mtime (or content hash); a missing file (a manifest row) still fingerprints, as 'missing'."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    return f"{st.st_size}:{file_sha256(path) if hash_contents else st.st_mtime_ns}"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, cached per (path, size, mtime): the three splits of a data set (and the FID
    weights of every evaluation) hash a file once per process, and a changed file is hashed again."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of_file(path)
