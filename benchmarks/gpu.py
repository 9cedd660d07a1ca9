"""GPU benchmark in one go (< 8 min on one H200): writes benchmarks/results/gpu-<date>-<gpu>.{json,md}.

Parts, each side by side in one process (alternating repeats, warm-up steps not timed):
  1. train: images/s of the default 2D DDPM UNet (conf/model/ddpm.yaml) at 64x64 and 128x128, batch 64, a plain
     PyTorch loop vs synthmed's loop (Lightning Trainer + MLflow logger, as `synthmed train`), in fp32, bf16
     autocast, and bf16 + torch.compile; ratio synthmed/plain per setting;
  2. sampling: DDIM-50 images/s, synthmed `sample()` vs MONAI `DiffusionInferer` (same net, schedule and noise);
  3. fid: feature extraction images/s over 10k PNGs (two folders of 5k), `python -m pytorch_fid` vs
     `python -m synthmed.metrics.fid_cli`, both run in this process on the same files and weights;
  4. memory3d: a 3D DDPM training step at 64^3 and a VAE step at 96^3 (smaller when out of memory): step time and
     peak memory without and with activation checkpointing;
  5. ddp: with more than one GPU, training images/s on 1..N devices and the scaling efficiency.

    python benchmarks/gpu.py                 # on a CUDA machine
    python benchmarks/gpu.py --dry           # every part tiny on the CPU (the test suite runs this)

A part that would start after `--budget` seconds is skipped and recorded as such. Without the real Inception
weights file the FID part uses a seeded random one (same network and cost; timings only).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import pytorch_lightning as pl
import torch
from torch.optim.swa_utils import AveragedModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fid as fid_bench
import sampling as bench
from overhead import StepTimer, bench_logger

from synthmed.config import instantiate
from synthmed.models.base import ema_multi_avg_fn

REPO = Path(__file__).resolve().parents[1]
FULL = {"sizes": [64, 128], "batch": 64, "steps": 30, "warmup": 10, "repeats": 2, "compile_repeats": 1,
        "sample_n": 64, "sample_size": 64, "ddim_steps": 50, "fid_images": 10_000, "fid_size": 64,
        "ddpm3d": [64, 48, 32], "vae3d": [96, 80, 64], "batch3d": 2, "ddp_steps": 30, "sample_repeats": 3,
        "fid_dims": 2048, "unet": [], "vae": []}
DRY = {"sizes": [16], "batch": 4, "steps": 3, "warmup": 1, "repeats": 1, "compile_repeats": 1,
       "sample_n": 2, "sample_size": 16, "ddim_steps": 2, "fid_images": 8, "fid_size": 16,
       "ddpm3d": [16], "vae3d": [16], "batch3d": 1, "ddp_steps": 3, "sample_repeats": 1, "fid_dims": 64,
       "unet": ["model.net.channels=[8,16,16]", "model.net.norm_num_groups=8", "model.net.num_head_channels=8"],
       "vae": ["model.autoencoder.channels=[8,8,8]", "model.autoencoder.norm_num_groups=8"]}
SETTINGS = {"fp32": ("32-true", False), "bf16": ("bf16-mixed", False), "bf16+compile": ("bf16-mixed", True)}


# ---- 1. training throughput --------------------------------------------------------------------------------------
def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))


def plain_loop(model, loader, device, precision: str, compiled: bool, steps: int, warmup: int) -> float:
    """A hand-written loop doing synthmed's work per step (loss, backward, clip, AdamW, EMA): images/s."""
    net, process = model.net.to(device), model.process
    ema = AveragedModel(net, multi_avg_fn=ema_multi_avg_fn(model.ema_decay), use_buffers=True)
    if compiled:  # after the EMA copy, as GenerativeModule.compile_networks (the EMA network is not compiled)
        net.compile()
    opt = model.optimizer_factory(net.parameters())
    net.train()
    step, start, batch_size, batches = 0, None, 0, iter(loader)
    while step < steps:
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            continue
        x = batch["image"].to(device, non_blocking=True)
        with autocast(device, precision):
            loss = process.loss(net, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), model.grad_clip_norm)
        opt.step()
        ema.update_parameters(net)
        step, batch_size = step + 1, x.shape[0]
        if step == warmup:
            bench.sync(device)
            start = time.perf_counter()
    bench.sync(device)
    return (steps - warmup) * batch_size / (time.perf_counter() - start)


def compose_cfg(root: Path, size: int, batch: int, n_train: int, extra: list[str]):
    """The train config of the default DDPM on the 2D phantoms, everything under `root`."""
    from hydra import compose, initialize_config_dir

    from synthmed.config import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[
            f"paths.root={root}", f"paths.output_dir={root}/out", f"dataset.size={size}",
            f"dataset.datamodule.batch_size={batch}", f"dataset.datamodule.dataset.n_train={n_train}",
            "dataset.datamodule.dataset.n_val=8", "dataset.datamodule.dataset.n_test=8", *extra])


def synthmed_loop(cfg, model, datamodule, device, precision: str, compiled: bool, steps: int, warmup: int,
                  root: Path, devices: int = 1) -> float:
    """`synthmed train`'s Trainer and MLflow logger (no periodic evaluation): images/s over all devices."""
    if compiled:
        model.compile_networks()
    logger = bench_logger(cfg, root, "gpu-bench")
    timer = StepTimer(warmup)
    trainer = pl.Trainer(max_steps=steps, logger=logger, callbacks=[timer], limit_val_batches=0,
                         log_every_n_steps=cfg.trainer.log_every_n_steps, enable_model_summary=False,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=root,
                         precision=precision, accelerator="gpu" if device.type == "cuda" else "cpu",
                         devices=devices, strategy="ddp" if devices > 1 else "auto")
    trainer.fit(model, datamodule=datamodule)
    return (steps - warmup) * datamodule.batch_size * devices / (timer.end - timer.start)


def part_train(p: dict, device: torch.device, root: Path) -> dict:
    """Plain vs synthmed images/s per image size and precision setting, alternating runs."""
    out = {}
    for size in p["sizes"]:
        cfg = compose_cfg(root, size, p["batch"], max(4 * p["batch"], 16), p["unet"])
        datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
        datamodule.setup("fit")
        pl.seed_everything(0)
        reference = instantiate(cfg.model, "model")
        for name, (precision, compiled) in SETTINGS.items():
            rates = {"plain": [], "synthmed": []}
            for r in range(p["compile_repeats"] if compiled else p["repeats"]):
                pl.seed_everything(r)
                rates["plain"].append(plain_loop(copy_of(reference), datamodule.train_dataloader(), device,
                                                 precision, compiled, p["steps"], p["warmup"]))
                pl.seed_everything(r)
                rates["synthmed"].append(synthmed_loop(cfg, copy_of(reference), datamodule, device, precision,
                                                       compiled, p["steps"], p["warmup"], root))
            med = {k: statistics.median(v) for k, v in rates.items()}
            out[f"{size}/{name}"] = {"size": size, "batch": p["batch"], "setting": name, "runs": rates,
                                     "images_per_s": med, "ratio": med["synthmed"] / med["plain"]}
            print(f"train {size}px {name}: plain {med['plain']:.1f}, synthmed {med['synthmed']:.1f} images/s, "
                  f"ratio {med['synthmed'] / med['plain']:.3f}", flush=True)
    return out


def copy_of(model):
    import copy

    return copy.deepcopy(model)


# ---- 2. sampling ----------------------------------------------------------------------------------------------------
def part_sampling(p: dict, device: torch.device, root: Path) -> dict:
    model = bench.ddpm_model(root, p["sample_size"], 2, p["ddim_steps"], *p["unet"])
    result = bench.sampling_side_by_side(model, p["sample_n"], p["sample_repeats"], device)
    print(f"sampling DDIM-{p['ddim_steps']}: ratio synthmed/MONAI {result['ratio']:.3f}", flush=True)
    return result | {"size": p["sample_size"]}


# ---- 3. FID feature extraction --------------------------------------------------------------------------------------
def run_module(module: str, argv: list[str]) -> tuple[float, float]:
    """(FID printed, wall seconds) of `python -m <module> <argv>` run in this process (runpy)."""
    buf = io.StringIO()
    start = time.perf_counter()
    with mock.patch.object(sys, "argv", [module, *argv]), contextlib.redirect_stdout(buf):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise RuntimeError(f"python -m {module} {' '.join(argv)} exited with {stop.code}") from None
    wall = time.perf_counter() - start
    found = re.search(r"^FID:\s+(\S+)", buf.getvalue(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"python -m {module} printed no FID line: {buf.getvalue()[-500:]}")
    return float(found.group(1)), wall


@contextlib.contextmanager
def fid_weights(tmp: Path):
    """The real Inception weights when cached, else a seeded random file in a temporary TORCH_HOME (restored)."""
    from synthmed.metrics import inception

    if inception.default_weights_path().is_file():
        yield "real"
        return
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(tmp / "torch_home")
    try:
        inception.make_random_fid_weights(inception.default_weights_path(), seed=0)
        yield "random (real file absent: timings only)"
    finally:
        if old is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = old


def part_fid(p: dict, device: torch.device, tmp: Path, dry: bool) -> dict:
    half = p["fid_images"] // 2
    real = fid_bench.write_pngs(tmp / "real", half, p["fid_size"], seed=0, brightness=0.0)
    fake = fid_bench.write_pngs(tmp / "fake", half, p["fid_size"], seed=1, brightness=0.3)
    argv = [str(fake), str(real), "--device", str(device), "--dims", str(p["fid_dims"])]
    argv += ["--num-workers", "0"] if dry else []
    with fid_weights(tmp) as weights:
        runs = {}
        for name, module in (("pytorch_fid", "pytorch_fid"), ("synthmed", "synthmed.metrics.fid_cli")):
            value, wall = run_module(module, argv)
            runs[name] = {"fid": value, "wall_s": wall, "images_per_s": 2 * half / wall}
    ratio = runs["synthmed"]["images_per_s"] / runs["pytorch_fid"]["images_per_s"]
    print(f"fid: pytorch-fid {runs['pytorch_fid']['images_per_s']:.1f}, synthmed "
          f"{runs['synthmed']['images_per_s']:.1f} images/s, ratio {ratio:.3f}", flush=True)
    return {"images": 2 * half, "size": p["fid_size"], "dims": p["fid_dims"], "weights": weights, "runs": runs, "ratio": ratio,
            "abs_fid_difference": abs(runs["synthmed"]["fid"] - runs["pytorch_fid"]["fid"])}


# ---- 4. 3D memory -----------------------------------------------------------------------------------------------
def vae_pair(root: Path, size: int, extra: list[str]) -> dict:
    """The default VAE (conf/model/vae.yaml) on `size`^3 volumes, with and without MONAI's use_checkpoint."""
    models = {}
    for key, flag in (("plain", "false"), ("checkpointed", "true")):
        models[key] = bench.ddpm_model(root, size, 3, None, "model=vae",
                                     f"model.autoencoder.use_checkpoint={flag}", *extra)
    models["checkpointed"].load_state_dict(models["plain"].state_dict())
    return models


class VAEStep:
    """Adapter giving a VAEModule the `process.loss(net, x)` / `net` interface of sampling.train_step_fn."""

    def __init__(self, vae) -> None:
        self.vae, self.net, self.optimizer_factory = vae, vae.autoencoder, vae.optimizer_factory
        self.process = self

    def loss(self, net, x):
        recon, mu, sigma = net(x)
        return self.vae._losses(x, recon, mu, sigma)["train/loss"]

    def trainable_parameters(self):
        return self.net.parameters()

    def to(self, device):
        self.vae.to(device)
        return self

    def train(self):
        self.vae.train()
        return self


def largest_fitting(sizes: list[int], build, measure) -> dict:
    """`measure(build(size))` for the first size that fits in memory (CUDA out-of-memory tries the next)."""
    for size in sizes:
        try:
            return {"size": size, **measure(build(size), size)}
        except torch.cuda.OutOfMemoryError as err:
            print(f"  {size}^3: out of memory ({str(err)[:80]}...), trying smaller", flush=True)
            torch.cuda.empty_cache()
    return {"size": None, "error": f"out of memory at every size {sizes}"}


def part_memory3d(p: dict, device: torch.device, root: Path) -> dict:
    def measure(pair, size):
        x = torch.rand(p["batch3d"], 1, size, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return bench.checkpointing_side_by_side(pair, x.to(device), p["repeats"])

    out = {"ddpm": largest_fitting(p["ddpm3d"], lambda s: bench.checkpointing_pair(root, s, *p["unet"]), measure),
           "vae": largest_fitting(p["vae3d"], lambda s: {k: VAEStep(v) for k, v in vae_pair(root, s, p["vae"]).items()},
                                  measure)}
    for name, r in out.items():
        if "ratios" in r:
            print(f"memory3d {name} {r['size']}^3: checkpointed/plain {r['ratios']}", flush=True)
    return out


# ---- 5. DDP scaling -------------------------------------------------------------------------------------------------
def ddp_worker(p: dict, devices: int, device: torch.device, root: Path) -> float:
    """synthmed's loop (bf16 on CUDA) on `devices` devices; per-device batch p["batch"]: images/s over all ranks."""
    cfg = compose_cfg(root, p["sizes"][0], p["batch"], max(4 * p["batch"] * devices, 16), p["unet"])
    datamodule = instantiate(cfg.dataset.datamodule, "dataset.datamodule")
    pl.seed_everything(0)
    model = instantiate(cfg.model, "model")
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    return synthmed_loop(cfg, model, datamodule, device, precision, False, p["ddp_steps"], p["warmup"], root,
                         devices)


def part_ddp(p: dict, device: torch.device, root: Path, dry: bool) -> dict:
    """images/s on 1..N GPUs (a fresh process each: Lightning's DDP launcher re-runs the command per rank)."""
    n = torch.cuda.device_count() if device.type == "cuda" else 1
    if n == 1 and not dry:
        return {"devices": [1], "note": "one device: no scaling to measure"}
    counts = sorted({1, *[2**k for k in range(1, n.bit_length()) if 2**k <= n], n})
    rates = {}
    for k in counts:
        if dry:  # in-process, one CPU device: the same loop without the launcher
            rates[k] = ddp_worker(p, k, device, root)
            continue
        out = root / f"ddp{k}.json"
        cmd = [sys.executable, __file__, "--ddp-worker", str(k), "--worker-out", str(out)]
        subprocess.run(cmd, check=True, cwd=REPO)
        rates[k] = json.loads(out.read_text())["images_per_s"]
    eff = {k: rates[k] / (k * rates[1]) for k in counts}
    note = None if n > 1 else "one device: no scaling to measure"
    print(f"ddp: images/s {rates}, efficiency {eff}", flush=True)
    return {"devices": counts, "images_per_s": rates, "efficiency": eff, "size": p["sizes"][0],
            "batch_per_device": p["batch"], "note": note}


# ---- driver ---------------------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    env = bench.machine()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True, check=False)
    env["commit"] = (git.stdout.strip() or "unknown") + ("-dirty" if dirty.stdout.strip() else "")
    env["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env["device"] = str(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, check=False)
        except FileNotFoundError:
            smi = subprocess.CompletedProcess([], 1)
        env |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "gpu_count": torch.cuda.device_count(), "cuda": torch.version.cuda,
                "driver": smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else "unknown"}
    else:
        env["gpu"] = "none (CPU)"
    return env


PARTS = ("train", "sampling", "fid", "memory3d", "ddp")


def run_parts(p: dict, device: torch.device, root: Path, dry: bool, budget: float, parts) -> dict:
    start, out = time.perf_counter(), {}
    calls = {"train": lambda: part_train(p, device, root), "sampling": lambda: part_sampling(p, device, root),
             "fid": lambda: part_fid(p, device, root, dry), "memory3d": lambda: part_memory3d(p, device, root),
             "ddp": lambda: part_ddp(p, device, root, dry)}
    for name in parts:
        elapsed = time.perf_counter() - start
        if elapsed > budget:
            out[name] = {"skipped": f"time budget of {budget:.0f} s spent ({elapsed:.0f} s)"}
            continue
        t0 = time.perf_counter()
        out[name] = calls[name]() | {"part_wall_s": time.perf_counter() - t0}
    return out


def markdown(result: dict) -> str:
    """The Markdown table of a result (also in the JSON)."""
    e, r = result["environment"], result["results"]
    lines = [f"# synthmed GPU benchmark{' (--dry: tiny, CPU; not a measurement)' if result['dry'] else ''}", "",
             (f"{e['date']}, commit {e['commit']}, {e.get('gpu')} (driver {e.get('driver', '-')}, CUDA "
              f"{e.get('cuda', '-')}), torch {e['torch']}, MONAI {e['monai']}"), "",
             "| part | setting | ours | peer | ratio |", "| --- | --- | --- | --- | --- |"]
    for key, t in r.get("train", {}).items():
        if isinstance(t, dict) and "ratio" in t:
            lines.append(f"| train images/s (batch {t['batch']}) | {key} | {t['images_per_s']['synthmed']:.1f} | "
                         f"{t['images_per_s']['plain']:.1f} (plain loop) | {t['ratio']:.3f} |")
    s = r.get("sampling", {})
    if "ratio" in s:
        lines.append(f"| DDIM-{s['steps']} images/s | {s['size']}px, n={s['n']} | {s['images_per_s']['synthmed']:.2f} "
                     f"| {s['images_per_s']['monai']:.2f} (MONAI DiffusionInferer) | {s['ratio']:.3f} |")
    f = r.get("fid", {})
    if "ratio" in f:
        lines.append(f"| FID features images/s | {f['images']} PNGs {f['size']}px | "
                     f"{f['runs']['synthmed']['images_per_s']:.1f} | {f['runs']['pytorch_fid']['images_per_s']:.1f} "
                     f"(pytorch-fid) | {f['ratio']:.3f} |")
    for name, m in r.get("memory3d", {}).items():
        if isinstance(m, dict) and "ratios" in m:
            lines.append(f"| 3D {name} step, checkpointed vs plain | {m['size']}^3 | peak "
                         f"{m['checkpointed']['peak_bytes'] / 2**20:.0f} MiB, {m['checkpointed']['time_s']:.3f} s | "
                         f"peak {m['plain']['peak_bytes'] / 2**20:.0f} MiB, {m['plain']['time_s']:.3f} s | memory "
                         f"{m['ratios']['peak_memory'] or float('nan'):.3f}, time {m['ratios']['step_time']:.3f} |")
    d = r.get("ddp", {})
    if "efficiency" in d:
        for k in d["devices"]:
            lines.append(f"| DDP images/s | {k} device(s) | {d['images_per_s'][k]:.1f} | - | efficiency "
                         f"{d['efficiency'][k]:.3f} |")
    skipped = [f"{k}: {v['skipped']}" for k, v in r.items() if isinstance(v, dict) and "skipped" in v]
    return "\n".join(lines + ([""] + [f"Skipped: {s}" for s in skipped] if skipped else []) + [""])


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="every part tiny on the CPU (seconds; not a measurement)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder of the results")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds after which remaining parts are skipped")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--ddp-worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    p = DRY if args.dry else FULL
    if not args.dry and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device (or --dry for the tiny CPU run)")
    device = torch.device("cpu" if args.dry else "cuda")
    parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        sys.exit(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
    if args.ddp_worker:
        with tempfile.TemporaryDirectory() as tmp:
            rate = ddp_worker(p, args.ddp_worker, device, Path(tmp))
        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and args.worker_out:
            write_atomic(args.worker_out, json.dumps({"images_per_s": rate}))
        return {"images_per_s": rate}
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (Lightning's "32-true"), on both sides
    compile_backend = mock.patch.object(torch.nn.Module, "compile", _eager_compile) if args.dry else \
        contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, compile_backend:
        result = {"dry": args.dry, "environment": environment(device), "parameters": p,
                  "results": run_parts(p, device, Path(tmp), args.dry, args.budget, parts)}
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", result["environment"]["gpu"]).strip("-").lower()
    stem = f"{'dry' if args.dry else 'gpu'}-{datetime.now(timezone.utc):%Y%m%d-%H%M}-{gpu}"
    write_atomic(args.out / f"{stem}.json", json.dumps(result, indent=2, default=str))
    write_atomic(args.out / f"{stem}.md", markdown(result))
    print(markdown(result))
    print(f"written: {args.out / stem}.json and .md")
    return result


_module_compile = torch.nn.Module.compile


def _eager_compile(self, *args, **kwargs):
    """--dry: TorchDynamo traces with the eager backend (no Inductor code generation, seconds on a CPU)."""
    return _module_compile(self, *args, **{**kwargs, "backend": "eager"})


if __name__ == "__main__":
    main(sys.argv[1:])
