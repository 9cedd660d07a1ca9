"""A blinded study folder: matched PNG cases under neutral names, the reader's form, and the key kept apart.

    <out>/manifest.json          study id, counts, image format, the key's sha256 (what `analyze` checks)
    <out>/served/index.html      the offline form (no server, no network, no third-party asset)
    <out>/served/cases/*.png     the cases, shuffled: real and synthetic rendered by one function, no text chunks
    <out>/private/key.json       which case is which (run id, real split ids, sample indices): never hand it out
    <out>/private/synthetic/     the synthetic cases as marked exports (the `synthmed:synthetic` chunk), kept

Only `served/` goes to readers (`synthmed reader-study serve` serves nothing else). Every file is written to a
temporary name and renamed.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from synthmed.data import export
from synthmed.io import file_sha256
from synthmed.reader_study.form import render_form
from synthmed.viz import central_planes

MANIFEST_FORMAT = "synthmed.reader_study.manifest/1"
KEY_FORMAT = "synthmed.reader_study.key/1"
SERVED, PRIVATE = "served", "private"
KEY_FILE = f"{PRIVATE}/key.json"
REAL, SYNTHETIC = "real", "synthetic"


@dataclass
class Sources:
    """The images a study shows, both in [-1, 1] and on the same intensity mapping.

    Attributes:
        real: `[n_real, C, *spatial]` real images (2D or 3D).
        synthetic: `[n_synth, C, *spatial]` samples of the generator.
        real_ids: the non-identifying `id` of each real item (in the key only).
        intensity: the dataset's intensity record (decides 8- or 16-bit PNG for both kinds).
        provenance: run id, config hash, model, data set, seed, split: copied into the key and manifest.
    """

    real: Tensor
    synthetic: Tensor
    real_ids: list[str]
    intensity: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)


def write_text(path: Path, text: str) -> Path:
    """Atomic text write (temp file + rename)."""
    with export.atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def to_pictures(images: Tensor) -> Tensor:
    """What a reader sees of each image: 2D as is, 3D as its three central planes side by side.

    Args:
        images: `[B, C, H, W]` or `[B, C, H, W, D]` in [-1, 1].

    Returns:
        `[B, C', H', W']` in [-1, 1] with C' = 1 or 3 (other channel counts: the first channel).
    """
    if images.ndim == 5:
        images = central_planes(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W] or [B, C, H, W, D], got {tuple(images.shape)}")
    return (images if images.shape[1] in (1, 3) else images[:, :1]).float().clamp(-1, 1)


def pixels(picture: Tensor, bits: int) -> np.ndarray:
    """`[C, H, W]` in [-1, 1] -> the PNG's integers, by the same rule as `export.write_png` (so both match)."""
    levels = 2 ** bits - 1
    x = np.clip(picture.detach().cpu().double().numpy(), -1.0, 1.0)  # float64 like write_png: same rounding
    x = np.rint((x + 1.0) * 0.5 * levels).astype(np.uint16 if bits == 16 else np.uint8)
    return x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)


def write_case(array: np.ndarray, path: Path) -> Path:
    """A served case: pixels only (IHDR, IDAT, IEND), no text, time or physical-size chunk."""
    with export.atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def _check(sources: Sources) -> None:
    real, synth = sources.real, sources.synthetic
    if len(real) < 1 or len(synth) < 1:
        raise ValueError(f"a study needs n_real >= 1 and n_synth >= 1, got {len(real)} and {len(synth)}")
    if real.shape[1:] != synth.shape[1:]:
        raise ValueError(f"real images {list(real.shape[1:])} and synthetic {list(synth.shape[1:])} differ in shape: "
                         "a reader would tell them apart by size")
    for name, images in (("real", real), ("synthetic", synth)):
        if not torch.isfinite(images).all():
            raise ValueError(f"the {name} images hold NaN/Inf values: refusing to show them to readers")
    if len(sources.real_ids) != len(real):
        raise ValueError(f"{len(sources.real_ids)} real ids for {len(real)} real images")


def _empty_target(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"out={out} is not empty: a study folder is written once (pick a new folder)")


def make_study(sources: Sources, out: str | Path, seed: int = 0, title: str = "Reader study") -> dict:
    """Write the blinded study folder `out` (see the module doc); returns the manifest.

    Cases are numbered in an order shuffled with `seed`; real and synthetic pictures go through `to_pictures` and
    `pixels` alike, so they share size, mode, bit depth and window.
    """
    _check(sources)
    out = Path(out)
    _empty_target(out)
    bits = 8 if to_pictures(sources.real[:1]).shape[1] == 3 else export.png_bits(sources.intensity)
    kinds = [REAL] * len(sources.real) + [SYNTHETIC] * len(sources.synthetic)
    order = np.random.default_rng(seed).permutation(len(kinds))
    width = max(3, len(str(len(kinds))))
    study_id = secrets.token_hex(8)
    cases, key_cases = [], []
    for number, index in enumerate(order, start=1):
        case_id = f"case_{number:0{width}d}"
        kind = kinds[index]
        j = int(index) if kind == REAL else int(index) - len(sources.real)
        image = (sources.real if kind == REAL else sources.synthetic)[j:j + 1]
        picture = to_pictures(image)[0]
        write_case(pixels(picture, bits), out / SERVED / "cases" / f"{case_id}.png")
        origin = {"split_id": sources.real_ids[j]} if kind == REAL else {"sample_index": j}
        if kind == SYNTHETIC:  # the marked export of the same pixels, for the record; never served
            meta = {**sources.provenance, "sample_index": j, "reader_study": study_id, "case_id": case_id}
            export.write_png(picture, out / PRIVATE / "synthetic" / f"{case_id}.png", sources.intensity, meta)
        cases.append({"case_id": case_id, "src": f"cases/{case_id}.png"})
        key_cases.append({"case_id": case_id, "truth": kind, **origin})
    key = {"format": KEY_FORMAT, "study_id": study_id, "salt": secrets.token_hex(16), "seed": seed,
           "provenance": sources.provenance, "cases": key_cases}
    write_text(out / KEY_FILE, json.dumps(key, indent=2) + "\n")
    write_text(out / SERVED / "index.html", render_form(study_id, title, cases))
    shape = pixels(to_pictures(sources.real[:1])[0], bits).shape
    manifest = {"format": MANIFEST_FORMAT, "study_id": study_id, "title": title,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "n_cases": len(kinds), "n_real": len(sources.real), "n_synthetic": len(sources.synthetic),
                "case_ids": [c["case_id"] for c in cases],
                "image": {"format": "png", "height": shape[0], "width": shape[1], "bits": bits,
                          "channels": 1 if len(shape) == 2 else shape[2],
                          "window": sources.intensity or "[-1, 1] model units"},
                "served_dir": SERVED, "key_file": KEY_FILE, "key_sha256": file_sha256(out / KEY_FILE),
                "run_id": sources.provenance.get("run_id")}
    write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def known_answer_sources(real: Tensor, synthetic: Tensor, provenance: dict | None = None) -> Sources:
    """Sources from tensors you hold (tests, a generator outside synthmed): real ids are `real_<i>`."""
    return Sources(real.detach().cpu(), synthetic.detach().cpu(), [f"real_{i}" for i in range(len(real))],
                   {}, provenance or {})

