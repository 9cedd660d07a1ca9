"""`synthmed sample`: load a trained run, draw a batch, pass it through the privacy gate, and write the marked
synthetic images with provenance sidecars, `privacy_report.json`, `DATASET_CARD.md` and `croissant.json`.

The export is atomic: everything is built in a hidden sibling folder and renamed to `out` at the end, so a refused or
failed export leaves no folder behind, and the images, the report and the cards always land together.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from synthmed.config import CONF_DIR, instantiate, register_resolvers
from synthmed.data import export
from synthmed.evaluation.gate import (
    MODES,
    GatedBatch,
    GateRefused,
    build_gate,
    encoder_settings,
    gated_batch,
    model_drawer,
)
from synthmed.io import atomic_write
from synthmed.metrics.privacy_gate import DISCLAIMER, GateSettings
from synthmed.models.conditioning import check_request, requested, set_guidance
from synthmed.reports import cards
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.confighash import short_hash
from synthmed.tracking.restore import Restored, provenance, restore_for_sampling
from synthmed.viz import image_grid, save_png

log = logging.getLogger(__name__)
FORMATS = ("png", "nifti", "dicom")
REPORT = "privacy_report.json"


def write_one(image: torch.Tensor, out: Path, index: int, fmt: str, restored: Restored, meta: dict) -> Path:
    """One sample `[C, *spatial]` in [-1, 1] -> its file (or DICOM folder) and its sidecar JSON."""
    stem = out / f"sample_{index:06d}"
    intensity, geometry = restored.dataset.get("intensity") or None, restored.dataset.get("geometry")
    if fmt == "png":
        if image.ndim != 3:
            raise ValueError(f"format=png needs 2D samples [C, H, W]; this run makes {list(image.shape)}: "
                             "use format=nifti")
        path = export.write_png(image, stem.with_suffix(".png"), intensity, meta)
    elif fmt == "nifti":
        path = export.write_nifti(image, stem.with_suffix(".nii.gz"), intensity, geometry, meta)
    elif image.ndim == 3:  # a 2D sample: one single-frame file, as a radiograph is stored
        path = export.write_dicom_image(image, stem.with_suffix(".dcm"), intensity, geometry, meta)
    else:
        path = export.write_dicom(image, stem, intensity, geometry, meta)[0].parent
    export.write_sidecar(export.sidecar_path(path), meta)
    return path


GATE_ONLY = ("embedding", "max_rounds", "top_k", "audit_dir")  # privacy.* keys that are not GateSettings fields


def gate_settings(cfg: DictConfig) -> GateSettings:
    """`privacy.*` as GateSettings; a bad value is refused (naming its key) before any model is loaded."""
    p = OmegaConf.to_container(cfg.privacy, resolve=True)
    fields = {k: v for k, v in p.items() if k not in GATE_ONLY}
    unknown = sorted(set(fields) - set(GateSettings.__dataclass_fields__))
    if unknown:
        raise ValueError(f"privacy: unknown keys {unknown}; valid: {sorted(GateSettings.__dataclass_fields__)} "
                         f"and {list(GATE_ONLY)}")
    return GateSettings(**fields)


def check_request_args(cfg: DictConfig) -> tuple[Path, Path]:
    """Everything that can be refused before a model is loaded: format, gate, the output and audit folders."""
    gate_settings(cfg)
    if cfg.privacy.max_rounds < 0:
        raise ValueError(f"privacy.max_rounds must be >= 0, got {cfg.privacy.max_rounds}")
    if cfg.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got '{cfg.format}'")
    if cfg.gate not in MODES:
        raise ValueError(f"gate must be one of {MODES}, got '{cfg.gate}'")
    out, audit = Path(cfg.out).resolve(), Path(cfg.privacy.audit_dir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / REPORT).is_file():
        raise FileExistsError(f"out={out} exists and is neither empty nor an earlier export (no {REPORT}): an "
                              f"export replaces a folder as a whole; choose another out=")
    if audit == out or out in audit.parents:
        raise ValueError(f"privacy.audit_dir={audit} lies inside out={out}: the audit pairs show real training "
                         f"images and must stay outside the shared folder")
    return out, audit


def audited_batch(cfg: DictConfig, restored: Restored, cond: dict) -> tuple[GatedBatch, dict | None]:
    """The batch that passed `cfg.gate`, and the training split record (None with gate=off)."""
    draw = model_drawer(restored.model, cfg.seed, cfg.batch_size, cond)
    if cfg.gate == "off":
        log.warning("gate=off: exporting %d samples WITHOUT a memorization audit (recorded in the export and run)",
                    cfg.n)
        return gated_batch(draw, cfg.n, None, "off"), None
    p = cfg.privacy
    datamodule = instantiate(restored.cfg.dataset.datamodule, "dataset.datamodule")
    metrics = OmegaConf.to_container(restored.cfg.metrics, resolve=False) if "metrics" in restored.cfg else {}
    encoder = encoder_settings(metrics) if p.embedding else None
    gate, split = build_gate(datamodule, gate_settings(cfg), encoder, cfg.paths.cache_dir, cfg.device)
    return gated_batch(draw, cfg.n, gate, cfg.gate, p.max_rounds, p.top_k), split


def sample(cfg: DictConfig) -> list[Path]:
    """Write `cfg.n` samples of run `cfg.run` into `cfg.out` through the privacy gate; returns the written paths."""
    out, audit_dir = check_request_args(cfg)
    client, restored = restore_for_sampling(cfg)
    guidance = set_guidance(restored.model, cfg.get("guidance_scale"))
    base = provenance(restored, cfg.seed) | ({"guidance_scale": guidance} if guidance is not None else {})
    spec = OmegaConf.to_container(cfg.cond, resolve=True) if cfg.get("cond") else {}
    cond = requested(spec.get("label"), spec.get("attrs"), cfg.n, cfg.seed)
    check_request(restored.model.conditioning, cond)  # before anything is drawn or written
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    pairs_file = audit_dir / f"{base['run_id']}-{stamp}-pairs.png"
    try:
        batch, split = audited_batch(cfg, restored, cond)
    except GateRefused as err:  # nothing written to out=; the run keeps the decision, the audit folder the pairs
        err.report["refused"] = str(err)
        if err.pairs is not None:
            _write_pairs(err.pairs, pairs_file)
            err.report["top_pairs_image"] = str(pairs_file)
        _record_on_run(client, base["run_id"], {"gate": cfg.gate, **err.report}, stamp)
        raise
    report = privacy_report(batch, split, base, cfg)
    pairs = _write_pairs(batch.pairs, pairs_file) if batch.pairs is not None else None
    if pairs:
        report["top_pairs_image"] = "kept outside the export folder (it shows real training images)"
    shared = report | {"top_pairs": [{k: v for k, v in pair.items() if k != "train_index"}  # a pointer into the
                                     for pair in report.get("top_pairs", [])]}  # private data stays with the run
    paths = write_export(out, batch, cond, base, restored, cfg.format, shared, cards.export_record(client, restored))
    _record_on_run(client, base["run_id"], report, stamp)
    print(f"wrote {len(paths)} {cfg.format} samples of run {base['run_id']} (config {short_hash(base['config_hash'])}) "
          f"to {out}; privacy gate {cfg.gate}: {_verdict(report)}" + (f"; audit pairs (real patients, do not share): "
                                                                       f"{pairs}" if pairs else ""), flush=True)
    return paths


def privacy_report(batch: GatedBatch, split: dict | None, base: dict, cfg: DictConfig) -> dict:
    """The export's `privacy_report.json`: the gate's decision on this exact batch and what it was checked against."""
    head = {"statement": DISCLAIMER, "run_id": base["run_id"], "config_hash": base["config_hash"], "seed": cfg.seed,
            "sample_indices": batch.indices, "training_split": split}
    if not batch.report.get("audited"):
        head["statement"] = ("gate=off: this batch was NOT audited against the training set; it may contain copies "
                             "of training images. " + DISCLAIMER)
    return head | batch.report


def _verdict(report: dict) -> str:
    if not report.get("audited"):
        return "OFF (not audited)"
    flagged = report["n_flagged"]
    if "filter" in report:
        return f"{report['filter']['dropped']} flagged samples dropped and redrawn; 0 of {report['n_samples']} flagged"
    return f"{flagged} of {report['n_samples']} flagged" + ("" if report["passed"] else ": " + "; ".join(report["reasons"]))


def write_export(out: Path, batch: GatedBatch, cond: dict, base: dict, restored: Restored, fmt: str, report: dict,
                 record: dict) -> list[Path]:
    """Images, sidecars, report and cards into a hidden sibling folder, then renamed to `out` in one step."""
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir(parents=True)
    try:
        for pos, (image, index) in enumerate(zip(batch.images, batch.indices)):
            meta = {**base, "sample_index": index}
            if cond:
                meta["cond"] = {k: v[pos].item() for k, v in cond.items()}
            write_one(image, tmp, pos, fmt, restored, meta)
        atomic_write(tmp / REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
        cards.write_dataset_cards(tmp, record, report, fmt, len(batch.indices))
        export.replace_dir(tmp, out)  # an empty folder or an earlier export (checked up front) is replaced
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return sorted(p for p in out.iterdir() if p.name.startswith("sample_") and not p.name.endswith(".json"))


def _write_pairs(pairs: torch.Tensor, path: Path) -> Path:
    """The closest (sample, training image) pairs `[2k, C, *spatial]` as one picture, outside the export folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(image_grid(pairs, nrow=2), path)


def _record_on_run(client, run_id: str, report: dict, stamp: str) -> None:
    """The gate's decision as an artifact of the trained run; gate=off and refusals also as tags."""
    mt.log_json(client, run_id, report, f"exports/{stamp}-privacy_report.json")
    mt.set_tags(client, run_id, {tk.EXPORT_GATE: report.get("gate", "?"), tk.EXPORT_AT: stamp})


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


register_resolvers()

if __name__ == "__main__":
    main()
