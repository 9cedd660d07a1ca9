"""benchmarks/gpu.py --dry: every part of the GPU benchmark runs tiny on the CPU, so the script cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_benchmark_dry_runs_every_part(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the benchmark's own temporary store only
    gpu = load("gpu")
    result = gpu.main(["--dry", "--out", str(tmp_path), "--budget", "100000"])
    r = result["results"]
    assert set(r) == set(gpu.PARTS) and not [k for k, v in r.items() if "skipped" in v]
    rows = [t for t in r["train"].values() if isinstance(t, dict)]  # beside them: the part's wall seconds
    assert {t["setting"] for t in rows} == set(gpu.SETTINGS)
    assert all(t["images_per_s"]["plain"] > 0 and t["images_per_s"]["synthmed"] > 0 for t in rows)
    assert r["sampling"]["max_abs_diff"] == 0  # synthmed's DDIM and MONAI's inferer: the same computation
    fid = r["fid"]["runs"]
    assert r["fid"]["abs_fid_difference"] <= 1e-3 * max(1.0, abs(fid["pytorch_fid"]["fid"]))
    for family in ("ddpm", "vae"):
        mem = r["memory3d"][family]
        assert mem["checkpointed"]["saved_bytes"] < mem["plain"]["saved_bytes"], family
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".json", ".md"]
    table = next(tmp_path.glob("*.md")).read_text()
    assert "not a measurement" in table and table.count("| train images/s") == len(gpu.SETTINGS)
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["dry"] is True
