"""`synthmed translate run=<run id | config hash> in=DIR out=DIR [direction=a2b|b2a]`: apply a trained translator to
a folder of NIfTI or PNG images and write marked synthetic outputs (DESIGN.md, transparency) with provenance sidecars.
`direction=b2a` (CycleGAN, which learns both ways) translates target-domain inputs back into the source domain: the
two recorded intensity mappings then swap roles.

Inputs are preprocessed like the run's training sources, from its records only: the source intensity mapping of
`data/dataset.json` (CT window, MR percentiles per image, linear), the recorded config's spacing, slice axis and
volume index, crop/pad to the model's size. A 2D model translates a volume slice by slice. Outputs are in the target's
native units (HU for CT) and take nothing from an input but its pixels; the sidecar names the input file (name only).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from monai.data import NibabelReader
from monai.transforms import Compose, ResizeWithPadOrCrop, ScaleIntensityRangePercentiles
from omegaconf import DictConfig
from PIL import Image

from synthmed.config import CONF_DIR, register_resolvers
from synthmed.data import export
from synthmed.data.file_dataset import LoadSource
from synthmed.data.splits import find_files
from synthmed.data.transforms import volume_pipeline
from synthmed.tracking.confighash import short_hash
from synthmed.tracking.restore import Restored, provenance, restore_for_sampling

NIFTI, PNG = (".nii", ".nii.gz"), (".png",)
FORMATS = ("auto", "png", "nifti")
GEOMETRIES = ("dataset", "input")
DIRECTIONS = ("a2b", "b2a")


def intensity_config(record: dict) -> dict:
    """A recorded `intensity` -> the volume chain's `{"mode", "window", "percentiles"}` (linear = a window)."""
    if not record:
        raise ValueError("the run records no source intensity mapping (data/dataset.json 'intensity')")
    if record["kind"] == "percentile":
        return {"mode": "mr", "window": [-1000.0, 1000.0], "percentiles": [record["lower"], record["upper"]]}
    return {"mode": "ct", "window": [record["native_min"], record["native_max"]], "percentiles": [0.5, 99.5]}


def load_png(path: Path, intensity: dict, spatial: tuple[int, ...]) -> torch.Tensor:
    """A grayscale PNG -> `[1, H, W]` in [-1, 1] at the model's size (pad value -1).

    Pixel v of a b-bit PNG is the fraction v / (2^b - 1) of the native range (as `export.write_png` writes it);
    MR-like (percentile) runs rescale each image by its own percentiles, as in training.
    """
    img = np.asarray(Image.open(path))
    if img.ndim != 2:
        raise ValueError(f"{path.name}: expected a grayscale PNG, got shape {img.shape}")
    levels = 65535.0 if img.dtype == np.uint16 or img.max() > 255 else 255.0
    x = torch.from_numpy(img.astype(np.float32))[None]
    if intensity["kind"] == "percentile":
        x = ScaleIntensityRangePercentiles(intensity["lower"], intensity["upper"], -1.0, 1.0, clip=True)(x)
    else:
        x = x / levels * 2.0 - 1.0
    return torch.as_tensor(ResizeWithPadOrCrop(spatial, value=-1.0)(x)).float()


def load_nifti(path: Path, restored: Restored, slice_axis: int) -> tuple[torch.Tensor, np.ndarray]:
    """A NIfTI volume through the training chain -> (`[1, *spatial]` in [-1, 1], its 4x4 RAS affine)."""
    data = restored.cfg.dataset.datamodule.dataset
    spatial = list(restored.model.image_shape[1:])
    if restored.model.spatial_dims == 2:
        spatial.insert(slice_axis, -1)  # the slice axis keeps its extent
    chain = volume_pipeline(LoadSource(NibabelReader()), data.get("spacing"), spatial,
                            intensity_config(restored.dataset["intensity"]), data.get("volume_index"))
    x = Compose(chain)({"source": str(path)})
    return x.as_tensor().float(), np.asarray(x.affine, dtype=np.float64)


def translate_image(model, source: torch.Tensor, seed: int, slice_axis: int) -> torch.Tensor:
    """Translate one source `[C, *spatial]`; a 2D model gets a volume `[C, X, Y, Z]` slice by slice and returns
    `[C, a, b, n]` (in-plane axes, then the slice axis). Noise comes from `seed` alone, so reruns agree; slices are
    batched by `model.sample` (`sample_batch_size`)."""
    gen = torch.Generator().manual_seed(seed)
    if source.ndim - 1 == model.spatial_dims:
        return model.sample(1, generator=gen, cond={"source": source[None].to(model.device)})[0].cpu()
    slices = source.movedim(1 + slice_axis, -1).permute(3, 0, 1, 2)  # [n, C, a, b]
    return model.sample(len(slices), generator=gen, cond={"source": slices.to(model.device)}).cpu().permute(1, 2, 3, 0)


def target_intensity(restored: Restored) -> dict:
    """The target's native mapping (e.g. the HU window) recorded in the run's data/dataset.json."""
    record = restored.dataset.get("target_intensity")
    if not record:
        raise ValueError(f"run {restored.run.info.run_id}: data/dataset.json has no target_intensity, so outputs "
                         f"cannot be mapped back to target units; was it trained on paired data (items with a target)?")
    return record


def translate(cfg: DictConfig) -> list[Path]:
    """Translate every NIfTI/PNG file under `cfg.in` (sorted; input index = position) into `cfg.out`."""
    if cfg.format not in FORMATS or cfg.geometry not in GEOMETRIES or cfg.direction not in DIRECTIONS:
        raise ValueError(f"format must be one of {FORMATS}, geometry one of {GEOMETRIES} and direction one of "
                         f"{DIRECTIONS}, got '{cfg.format}', '{cfg.geometry}', '{cfg.direction}'")
    _, restored = restore_for_sampling(cfg)
    model = restored.model
    if not model.requires_source:
        raise ValueError(f"run {cfg.run} is a '{restored.cfg.model.name}' model, not a translator (pix2pix, cond_ddpm, "
                         "cyclegan)")
    restored.dataset["target_intensity"] = target_intensity(restored)
    orient(restored, cfg.direction)
    base = provenance(restored, cfg.seed) | {"task": "translation", "direction": cfg.direction}
    inputs = [Path(p) for p in find_files(Path(cfg["in"]), NIFTI + PNG)]
    out, written = Path(cfg.out), []
    out.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(inputs):
        meta = {**base, "sample_index": index, "input_name": path.name}
        written.append(translate_file(path, out / f"translation_{index:06d}", model, restored, cfg, meta))
    print(f"wrote {len(written)} translations of run {base['run_id']} (config {short_hash(base['config_hash'])}) "
          f"to {out}", flush=True)
    return written


def orient(restored: Restored, direction: str) -> None:
    """Point the model and the recorded mappings at `direction`: b2a reads inputs with the target's mapping and
    writes outputs in the source's (a ValueError, before any work, for a model that learned one way only)."""
    model = restored.model
    if direction not in model.directions:
        raise ValueError(f"direction={direction}: run {restored.run.info.run_id} ('{restored.cfg.model.name}') "
                         f"translates {list(model.directions)} only; b2a needs a model that learns both ways "
                         "(cyclegan)")
    model.set_direction(direction)
    if direction == "b2a":
        record = restored.dataset
        record["intensity"], record["target_intensity"] = record["target_intensity"], record["intensity"]


def translate_file(path: Path, stem: Path, model, restored: Restored, cfg: DictConfig, meta: dict) -> Path:
    """Preprocess, translate and write one input; returns the written image."""
    slice_axis = int(restored.cfg.dataset.datamodule.dataset.get("slice_axis", 2))
    is_png = path.name.lower().endswith(PNG)
    if is_png and model.spatial_dims != 2:
        raise ValueError(f"{path.name}: PNG inputs need a 2D model; this run translates volumes")
    fmt = cfg.format if cfg.format != "auto" else "png" if is_png else "nifti"
    if is_png:
        source, affine = load_png(path, restored.dataset["intensity"], model.image_shape[1:]), None
    else:
        source, affine = load_nifti(path, restored, slice_axis)
    seed = int(np.random.SeedSequence([int(cfg.seed), meta["sample_index"]]).generate_state(1)[0])
    image = translate_image(model, source, seed, slice_axis)
    intensity = restored.dataset["target_intensity"]
    if fmt == "png":
        if image.ndim != 3:
            raise ValueError(f"{path.name}: a volume cannot be written as PNG; use format=nifti")
        written = export.write_png(image, stem.with_suffix(".png"), intensity, meta)
    else:
        written = export.write_nifti(image, stem.with_suffix(".nii.gz"), intensity,
                                     output_geometry(restored, cfg.geometry, affine, slice_axis), meta)
    export.write_sidecar(export.sidecar_path(written), meta)
    return written


def output_geometry(restored: Restored, which: str, affine: np.ndarray | None, slice_axis: int) -> dict | None:
    """`dataset`: the run's recorded reference geometry (as `synthmed sample`); `input`: the preprocessed input's
    RAS affine (numbers only, so the translation overlays its source), columns in the output's axis order."""
    if which == "dataset" or affine is None:
        return restored.dataset.get("geometry")
    if restored.model.spatial_dims == 2:
        order = [a for a in range(3) if a != slice_axis] + [slice_axis]
        affine = affine[:, [*order, 3]]
    return {"affine": affine.tolist()}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="translate")
def main(cfg: DictConfig) -> None:
    translate(cfg)


register_resolvers()

if __name__ == "__main__":
    main()
