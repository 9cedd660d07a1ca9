"""Config helpers: the `_target_` allowlist, safe instantiation and the resolvers every conf/ file may use."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from synthmed.metrics import names


def _conf_dir() -> Path:
    """conf/ stays at the top of the source tree and ships inside the wheel as the package `synthmed.conf`
    (pyproject.toml maps it), found through importlib.resources. A source checkout's own conf/ wins, so a checkout
    run with PYTHONPATH beside another installed synthmed uses its own configs."""
    checkout = Path(__file__).resolve().parents[1] / "conf"
    if (checkout / "train.yaml").is_file() and (checkout.parent / "pyproject.toml").is_file():
        return checkout
    return Path(str(resources.files("synthmed.conf")))


CONF_DIR = _conf_dir()

# Only these packages may be named by a `_target_`: a config file is data, and data must not be able to run
# arbitrary callables (e.g. `os.system`) through Hydra's instantiate.
ALLOWED_TARGET_PREFIXES = ("synthmed.", "torch.", "monai.", "torchmetrics.", "pytorch_lightning.", "lightning.pytorch.")


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
    """Raise DisallowedTargetError naming the first key whose `_target_` is not allowlisted."""
    for key, target in iter_targets(cfg, path):
        if not target.startswith(ALLOWED_TARGET_PREFIXES):
            raise DisallowedTargetError(
                f"config key '{key}' names _target_ '{target}', which is not allowed; a _target_ must start with "
                f"one of {', '.join(ALLOWED_TARGET_PREFIXES)}"
            )


def instantiate(cfg: Any, path: str = "", **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` after the allowlist check. `path` names `cfg` in error messages.

    Objects come back with plain dicts/lists (`_convert_="all"`) so that nothing OmegaConf-typed reaches a
    checkpoint's hyperparameters, which must load with `torch.load(weights_only=True)`.
    """
    check_targets(cfg, path)
    return hydra.utils.instantiate(cfg, _convert_="all", **kwargs)
