"""Run references as the user typed them: `run=1234e5` is a hash prefix, not the number 123400000.0.

Hydra's override grammar types a value before synthmed sees it (`1234e5` -> float, `000123` -> int 123, `1e10`,
`true`...), and the original text cannot be rebuilt from the number. The override as typed is kept in
`hydra.overrides.task`, so the reference is read back from there.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def _typed_overrides() -> list[str]:
    """This job's command-line overrides, verbatim (empty outside a Hydra app, e.g. a composed test config)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def as_typed(key: str, value: Any, overrides: list[str] | None = None) -> str:
    """The text the user gave for `key` (last `key=`, `+key=` or `++key=` override), else `str(value)`.

    Args:
        key: a config key, e.g. `run` or `resume`.
        value: its composed value (used when it was not given on the command line).
        overrides: the overrides to search (default: this Hydra job's).
    """
    typed = None
    for item in _typed_overrides() if overrides is None else overrides:
        name, sep, text = item.lstrip("+").partition("=")
        if sep and name == key:
            typed = text
    if typed is None:
        return str(value)
    if len(typed) >= 2 and typed[0] == typed[-1] and typed[0] in "'\"":  # run='1234e5' quoted for Hydra
        typed = typed[1:-1]
    return typed


def run_ref(cfg: DictConfig, key: str) -> str:
    """`cfg[key]` as a run reference string (run id, config hash prefix, `last`)."""
    return as_typed(key, cfg.get(key))
