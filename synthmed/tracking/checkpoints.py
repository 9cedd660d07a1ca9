"""Checkpoints that a run is about to load: refuse URLs, and find a damaged file before Lightning tries to unpickle
it (a truncated `last.ckpt` after a full disk or a kill mid-write otherwise fails deep inside `torch.load`).

A torch checkpoint is a zip archive whose central directory sits at its end, so a cut-off file is not a zip at all
and a damaged member fails its CRC: `zipfile` finds both without deserializing anything.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)
FALLBACKS = ("none", "previous")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read back; the message names it and the cause."""


def refuse_url(value, key: str) -> None:
    """A checkpoint given as a URL is refused: Lightning would fetch it and `torch.load` it without weights_only."""
    if value is not None and _URL.match(str(value)):
        raise ValueError(f"{key}={value}: a URL is refused for a checkpoint (it would be downloaded and unpickled "
                         "without weights_only). Give a run id or config hash; to use a file from elsewhere, "
                         "download and verify it yourself first.")


def check_checkpoint(path: str | Path) -> Path:
    """Raises `CorruptCheckpointError` naming `path` when it is empty, cut off or has a member failing its CRC."""
    path = Path(path)
    if not path.is_file():
        raise CorruptCheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        raise CorruptCheckpointError(f"checkpoint {path} is truncated or not a torch checkpoint (no zip central "
                                     f"directory in its {path.stat().st_size} bytes)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptCheckpointError(f"checkpoint {path} is damaged ({type(e).__name__}: {e})") from None
    if bad is not None:
        raise CorruptCheckpointError(f"checkpoint {path} is damaged: member {bad} fails its CRC check")
    return path


def usable_checkpoint(newest: Path, fallback: str = "none") -> Path:
    """`newest` if it reads back; with `fallback="previous"` the newest readable `*.ckpt` beside it instead.

    Raises:
        CorruptCheckpointError: `newest` is damaged and there is no fallback (or no readable one).
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"resume_fallback must be one of {FALLBACKS}, got {fallback!r}")
    try:
        return check_checkpoint(newest)
    except CorruptCheckpointError as e:
        if fallback == "none":
            raise CorruptCheckpointError(f"{e}; resume_fallback=previous resumes from the newest readable "
                                         "checkpoint in that folder instead") from None
        error = e
    others = sorted((p for p in newest.parent.glob("*.ckpt") if p != newest), key=lambda p: p.stat().st_mtime,
                    reverse=True)
    for candidate in others:
        try:
            check_checkpoint(candidate)
        except CorruptCheckpointError as e:
            log.warning("resume: skipping %s", e)
            continue
        log.warning("resume: %s; resuming from the previous readable checkpoint %s", error, candidate)
        return candidate
    raise CorruptCheckpointError(f"{error}; and no other readable checkpoint in {newest.parent}")
