"""`synthmed sample`: load a trained run from MLflow and write marked synthetic images with provenance sidecars."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from synthmed.config import CONF_DIR, register_resolvers
from synthmed.data import export
from synthmed.models.conditioning import check_request, requested, set_guidance
from synthmed.tracking.confighash import short_hash
from synthmed.tracking.restore import Restored, provenance, restore_for_sampling

log = logging.getLogger(__name__)
FORMATS = ("png", "nifti", "dicom")


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


def sample(cfg: DictConfig) -> list[Path]:
    """Write `cfg.n` samples of run `cfg.run` into `cfg.out`; returns the written paths."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got '{cfg.format}'")
    _, restored = restore_for_sampling(cfg)
    model = restored.model
    guidance = set_guidance(model, cfg.get("guidance_scale"))
    base = provenance(restored, cfg.seed) | ({"guidance_scale": guidance} if guidance is not None else {})
    out = Path(cfg.out)
    spec = OmegaConf.to_container(cfg.cond, resolve=True) if cfg.get("cond") else {}
    cond = requested(spec.get("label"), spec.get("attrs"), cfg.n, cfg.seed)
    check_request(model.conditioning, cond)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with tqdm(total=cfg.n, desc="sampling", unit="img") as bar:
        for start in range(0, cfg.n, cfg.batch_size):
            # Same seed + offset: chunk by chunk gives exactly the images one big call would (base.sample).
            part = slice(start, min(start + cfg.batch_size, cfg.n))
            sub = {k: v[part] for k, v in cond.items()} if cond else None
            images = model.sample(part.stop - start, generator=torch.Generator().manual_seed(cfg.seed),
                                  cond=sub, offset=start).cpu()
            for j, image in enumerate(images):
                meta = {**base, "sample_index": start + j}
                if sub:
                    meta["cond"] = {k: v[j].item() for k, v in sub.items()}
                paths.append(write_one(image, out, start + j, cfg.format, restored, meta))
            bar.update(len(images))
    print(f"wrote {len(paths)} {cfg.format} samples of run {base['run_id']} "
          f"(config {short_hash(base['config_hash'])}) to {out}", flush=True)
    return paths


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


register_resolvers()

if __name__ == "__main__":
    main()
