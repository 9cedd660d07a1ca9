"""Config helpers: the `_target_` allowlist, safe instantiation and the resolvers every conf/ file may use."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from synthmed.metrics import names
from synthmed.targets import refusal


def _conf_dir() -> Path:
    """conf/ stays at the top of the source tree and ships inside the wheel as the package `synthmed.conf`
    (pyproject.toml maps it), found through importlib.resources. A source checkout's own conf/ wins, so a checkout
    run with PYTHONPATH beside another installed synthmed uses its own configs."""
    checkout = Path(__file__).resolve().parents[1] / "conf"
    if (checkout / "train.yaml").is_file() and (checkout.parent / "pyproject.toml").is_file():
        return checkout
    return Path(str(resources.files("synthmed.conf")))


CONF_DIR = _conf_dir()

class DisallowedTargetError(ValueError):
    """A config names a `_target_` outside the allowlist."""


def _metric_resolver(name: str) -> str:
    """`${metric:FID}` -> "val/fid": config files refer to metric keys without retyping them."""
    table = names.all_names()
    if name not in table:
        raise KeyError(f"unknown metric constant '{name}' in ${{metric:...}}; known: {sorted(table)}")
    return table[name]


def spatial_size(size: Any, spatial_dims: Any) -> list[int]:
    """`dataset.size` as one int per spatial axis: `64` -> `[64, 64]` in 2D, `[64, 64, 64]` in 3D; a list must
    already have `spatial_dims` entries (e.g. `[32, 32, 16]` for anisotropic volumes)."""
    dims = int(spatial_dims)
    if dims not in (2, 3):
        raise ValueError(f"dataset.spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if isinstance(size, (list, tuple, ListConfig)):
        sides = [int(s) for s in size]
        if len(sides) != dims:
            raise ValueError(f"dataset.size={sides} has {len(sides)} sides but dataset.spatial_dims={dims}: pass one "
                             f"int (dataset.size={sides[0]}) or {dims} ints")
    else:
        sides = [int(size)] * dims
    if min(sides) < 1:
        raise ValueError(f"dataset.size must be positive pixels/voxels per side, got {size!r}")
    return sides


def image_shape(channels: Any, size: Any, spatial_dims: Any) -> list[int]:
    """`[C, *spatial]` that models generate, derived from `dataset.channels`, `dataset.size`, `dataset.spatial_dims`."""
    return [int(channels), *spatial_size(size, spatial_dims)]


def check_dataset(cfg: DictConfig) -> None:
    """Before any work: a file-based data set has its `dataset.root`, and an `image_shape` given by hand (an old
    spelling) agrees with the one derived from `dataset.size`. Raises ValueError naming the key."""
    data = cfg.get("dataset")
    if data is None:
        return
    nested = data.get("datamodule", {}).get("dataset", {})
    if "root" in data and data.root in (None, "???") and OmegaConf.is_interpolation(nested, "root"):
        raise ValueError(f"dataset={data.get('name')} reads your files: pass dataset.root=<folder or CSV manifest> "
                         "(see conf/dataset/ for what the folder holds)")
    for key in ("source_root", "target_root"):  # dataset=unpaired: two collections, or one manifest
        if key in data and data.get(key) is None and data.get("manifest") is None:
            raise ValueError(f"dataset={data.get('name')} reads two collections: pass dataset.source_root=<folder or "
                             f"CSV> and dataset.target_root=<folder or CSV> (dataset.{key} is not set), or "
                             "dataset.manifest=<CSV with a domain column>")
    if "image_shape" not in data or "size" not in data:
        return
    given = [int(s) for s in data.image_shape]
    derived = image_shape(data.channels, data.size, data.spatial_dims)
    if given != derived:
        size = list(data.size) if isinstance(data.size, ListConfig) else data.size
        raise ValueError(f"dataset.image_shape={given} disagrees with dataset.size={size}"
                         f" (spatial_dims={data.spatial_dims}, channels={data.channels}), which give {derived}: "
                         "image_shape is derived, leave it out and set dataset.size only")


def register_resolvers() -> None:
    """Register synthmed's OmegaConf resolvers once per process (idempotent)."""
    if not OmegaConf.has_resolver("metric"):
        OmegaConf.register_new_resolver("metric", _metric_resolver)
    if not OmegaConf.has_resolver("div"):  # `${div:${trainer.max_steps},2}`: whole steps, at least 1
        OmegaConf.register_new_resolver("div", lambda a, b: max(1, int(a) // int(b)))
    if not OmegaConf.has_resolver("spatial_size"):  # `${spatial_size:${dataset.size},${dataset.spatial_dims}}`
        OmegaConf.register_new_resolver("spatial_size", spatial_size)
    if not OmegaConf.has_resolver("image_shape"):  # `${image_shape:${dataset.channels},${dataset.size},...}`
        OmegaConf.register_new_resolver("image_shape", image_shape)


def iter_targets(node: Any, path: str = "") -> list[tuple[str, str]]:
    """All `(key path, target)` pairs under `node`, e.g. `("model.net._target_", "monai.networks...")`."""
    found: list[tuple[str, str]] = []
    if isinstance(node, (dict, DictConfig)):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                found.append((sub, str(value)))
            else:
                found.extend(iter_targets(value, sub))
    elif isinstance(node, (list, ListConfig)):
        for i, value in enumerate(node):
            found.extend(iter_targets(value, f"{path}[{i}]"))
    return found


def check_targets(cfg: Any, path: str = "") -> None:
    """Raise DisallowedTargetError naming the first key whose `_target_` is not allowlisted (synthmed/targets.py)."""
    for key, target in iter_targets(cfg, path):
        why = refusal(target)
        if why is not None:
            raise DisallowedTargetError(f"config key '{key}' names _target_ '{target}', which is not allowed: {why}")


def instantiate(cfg: Any, path: str = "", **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` after the allowlist check. `path` names `cfg` in error messages.

    Objects come back with plain dicts/lists (`_convert_="all"`) so that nothing OmegaConf-typed reaches a
    checkpoint's hyperparameters, which must load with `torch.load(weights_only=True)`.
    """
    check_targets(cfg, path)
    return hydra.utils.instantiate(cfg, _convert_="all", **kwargs)
