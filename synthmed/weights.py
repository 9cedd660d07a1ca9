"""`synthmed weights fetch`: the only command that downloads, and only when asked (the FID Inception weights).

The file goes where pytorch-fid (through torch.hub) looks for it, `$TORCH_HOME/hub/checkpoints/`, or to `--to DIR`.
`torch.hub.download_url_to_file` does the transfer: it writes a temporary `<name>.<uuid>.partial` beside the
destination, checks the sha256 prefix, renames it into place, and removes the temporary file on any failure, so an
interrupted or corrupted download leaves nothing behind.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from synthmed.io import file_sha256

# pytorch-fid's own URL (pytorch_fid.inception.FID_WEIGHTS_URL), spelled here so that this command does not import
# pytorch-fid; tests/test_weights.py checks the two agree. The name ends in the sha256 prefix of the file.
URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's convention: <name>-<sha256 prefix>.<ext>
USAGE = "usage: synthmed weights fetch [--to DIR] [--force]"


def expected_prefix(name: str) -> str:
    """The sha256 prefix a file name carries (`pt_inception-2015-12-05-6726825d.pth` -> `6726825d`)."""
    found = HASH_IN_NAME.findall(name)
    if not found:
        raise ValueError(f"'{name}' carries no sha256 prefix (<name>-<hex>.<ext>): cannot verify it")
    return found[-1]


def sha256_matches(path: Path, prefix: str) -> bool:
    return file_sha256(path).startswith(prefix)


def fetch(url: str = URL, folder: str | Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Download `url` into `folder` (default: torch.hub's checkpoint folder) after checking its sha256 prefix.

    Returns the file's path. An existing file with the right checksum is kept (no download); one with a wrong
    checksum is refused unless `force`. Raises RuntimeError on a checksum mismatch (nothing is written).
    """
    name = url.rsplit("/", 1)[-1]
    prefix = expected_prefix(name)
    dest = Path(folder).expanduser() if folder else Path(torch.hub.get_dir()) / "checkpoints"
    path = dest / name
    if path.is_file() and not force:
        if sha256_matches(path, prefix):
            return path
        raise RuntimeError(f"{path} exists but its sha256 does not start with {prefix}: remove it or pass --force")
    dest.mkdir(parents=True, exist_ok=True)
    # temp file + hash check + rename, and the temp file removed on failure: torch.hub's own downloader
    torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=progress)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synthmed weights", description=__doc__.splitlines()[0], usage=USAGE)
    parser.add_argument("action", choices=["fetch"], help="fetch: download the FID Inception weights")
    parser.add_argument("--to", default=None, help="folder to write to (default: $TORCH_HOME/hub/checkpoints)")
    parser.add_argument("--force", action="store_true", help="replace an existing file with a wrong checksum")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(f"downloading {URL}", file=sys.stderr)
    try:
        path = fetch(URL, args.to, force=args.force)
    except (RuntimeError, OSError, ValueError) as err:
        print(f"synthmed weights fetch: {err}", file=sys.stderr)
        return 1
    print(f"FID Inception weights: {path}")
    if args.to:
        print(f"point synthmed at it with metrics.fid_weights={path} (train/evaluate) or --weights {path} (fid)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
