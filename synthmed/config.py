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


def register_resolvers() -> None:
    """Register synthmed's OmegaConf resolvers once per process (idempotent)."""
    if not OmegaConf.has_resolver("metric"):
        OmegaConf.register_new_resolver("metric", _metric_resolver)
    if not OmegaConf.has_resolver("div"):  # `${div:${trainer.max_steps},2}`: whole steps, at least 1
        OmegaConf.register_new_resolver("div", lambda a, b: max(1, int(a) // int(b)))


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
