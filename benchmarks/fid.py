"""synthmed's FID vs ``python -m pytorch_fid`` on the same two folders of PNGs: values, wall times, ratios.

Run: ``python benchmarks/fid.py [--n 200] [--size 64] [--device cpu]``. Three runs, each a fresh process so
imports and the network build count for both sides: pytorch-fid, synthmed cold (empty reference cache), synthmed
warm (the reference folder's features come from the cache, as in every evaluation after the first). Uses the real
weights file when ``$TORCH_HOME/hub/checkpoints/`` has it; otherwise writes a seeded random one into a temporary
TORCH_HOME and says so (timings are the same, FID values are then not comparable to published ones).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from synthmed.metrics import inception


def write_pngs(folder: Path, n: int, size: int, seed: int, brightness: float) -> Path:
    """Smooth grayscale images (upsampled low-frequency noise), a stand-in for medical slices."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = Image.fromarray(rng.normal(0, 1, (size // 8, size // 8)).astype(np.float32), mode="F")
        img = np.tanh(np.asarray(low.resize((size, size), Image.BILINEAR)) + brightness)
        Image.fromarray(((img + 1) * 127.5).round().astype(np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(FID printed, wall seconds) of a command printing pytorch-fid's ``FID:  <value>`` line."""
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return float(re.search(r"^FID:\s+(\S+)", out.stdout, re.M).group(1)), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="images per folder")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ)
        if inception.default_weights_path().is_file():
            print(f"weights: {inception.default_weights_path()} (real)")
        else:
            env["TORCH_HOME"] = str(tmp / "torch_home")
            os.environ["TORCH_HOME"] = env["TORCH_HOME"]
            inception.make_random_fid_weights(inception.default_weights_path(), seed=0)
            print(f"weights: real file absent; using a seeded RANDOM state dict in {env['TORCH_HOME']} "
                  "(same network and cost; values not comparable to published FIDs)")
        fake = write_pngs(tmp / "fake", args.n, args.size, seed=1, brightness=0.3)
        real = write_pngs(tmp / "real", args.n, args.size, seed=0, brightness=0.0)
        print(f"data: {args.n} + {args.n} grayscale PNGs of {args.size}x{args.size}, device {args.device}, "
              f"{os.cpu_count()} CPUs\n")

        py, common = sys.executable, [str(fake), str(real), "--device", args.device]
        theirs, t_theirs = timed([py, "-m", "pytorch_fid", *common], env)
        ours_cmd = [py, "-m", "synthmed.metrics.fid_cli", *common, "--ref-cache", str(tmp / "cache")]
        ours, t_cold = timed(ours_cmd, env)
        warm, t_warm = timed(ours_cmd, env)

    print(f"{'run':<28}{'FID':>16}{'wall s':>10}{'speed-up':>10}")
    for name, value, wall in (("pytorch-fid", theirs, t_theirs), ("synthmed cold", ours, t_cold),
                              ("synthmed warm (ref cached)", warm, t_warm)):
        print(f"{name:<28}{value:>16.6f}{wall:>10.2f}{t_theirs / wall:>9.2f}x")
    print(f"\n|synthmed - pytorch-fid| = {abs(ours - theirs):.3g} (relative {abs(ours - theirs) / abs(theirs):.2e}); "
          f"warm vs cold value difference {abs(warm - ours):.3g}")


if __name__ == "__main__":
    main()
