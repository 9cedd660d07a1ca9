"""Which image sizes a configured network can take: checked on the config, before any model or run exists.

An encoder-decoder halves the image at each down-sampling and must double it back to the same size, so every side
must be a multiple of 2 ** (number of down-samplings); otherwise MONAI fails deep in a forward pass
("Expected size 26 but got size 25") after a run was already created.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf


def _levels(node: Any) -> int:
    """2 ** (len(channels) - 1): one down-sampling between consecutive channel levels."""
    return 2 ** (len(node["channels"]) - 1)


# _target_ -> the multiple every spatial side of its input must be. A net not listed here adds no constraint.
MULTIPLE: dict[str, Callable[[Any], int]] = {
    "monai.networks.nets.DiffusionModelUNet": _levels,
    "monai.networks.nets.AutoencoderKL": _levels,
    "monai.networks.nets.BasicUNet": lambda node: 16,  # four fixed max-pooling levels
    "monai.networks.nets.UNet": lambda node: math.prod(int(s) for s in node.get("strides", [])),
    "synthmed.nets.gan.ResNetGenerator": _levels,
    "synthmed.nets.gan.ResNetDiscriminator": lambda node: 2 ** len(node["channels"]),
}


def _targets(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """`(key path, node)` of every node under `node` that has a `_target_`."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


def required_multiple(model_cfg: DictConfig | dict) -> tuple[int, list[str]]:
    """The least common multiple every image side must be, and the config keys that impose it.

    For a latent model (LDM) the constraint of its latent network applies to the latent size and the autoencoder's
    factor is not in this config: the multiple returned is then a necessary, not a sufficient, condition.
    """
    tree = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(model_cfg, DictConfig) else model_cfg
    multiple, why = 1, []
    for path, node in _targets(tree, "model"):
        rule = MULTIPLE.get(str(node["_target_"]))
        if rule is None:
            continue
        m = int(rule(node))
        if m > 1:
            multiple = math.lcm(multiple, m)
            why.append(f"{path} ({node['_target_'].rsplit('.', 1)[-1]}: {m})")
    return multiple, why


def check_image_size(cfg: DictConfig) -> None:
    """Raise ValueError naming `dataset.size`, the valid multiple and the nearest valid sizes.

    Args:
        cfg: the composed train config (reads `dataset.image_shape` [C, *spatial] and `model`).
    """
    shape = cfg.dataset.get("image_shape") if "dataset" in cfg else None
    if shape is None or "model" not in cfg:
        return
    sides = [int(s) for s in list(shape)[1:]]
    multiple, why = required_multiple(cfg.model)
    bad = [s for s in sides if s % multiple]
    if not bad:
        return
    s = bad[0]
    lower, upper = (s // multiple) * multiple, (s // multiple + 1) * multiple
    nearest = " or ".join(str(v) for v in (lower, upper) if v > 0)
    raise ValueError(f"dataset.size={OmegaConf.select(cfg, 'dataset.size')}: every image side must be a multiple "
                     f"of {multiple} for this model (set by {', '.join(why)}), got side {s}; use e.g. "
                     f"dataset.size={nearest}, or change the networks' channels")
