"""Sampling and 3D-memory benchmarks, side by side in one run (CPU now; benchmarks/gpu.py reuses the parts on CUDA).

1. DDIM sampling, images/s: synthmed's `DDPMModule.sample` (per-sample seeded noise, EMA network, batching,
   clamping) vs MONAI's `DiffusionInferer.sample` driving the same network with a `DDIMScheduler` built from the same
   settings, on the same noise. Runs alternate (MONAI, synthmed, MONAI, ...) so machine-load drift hits both; the
   first batch of each side is warm-up. The two outputs are also compared (they are the same computation).
   Target: ratio synthmed/MONAI >= 0.95 (no overhead from synthmed).
2. One 3D DDPM training step (forward, backward, AdamW) with and without `model.activation_checkpointing=true`,
   alternating: step time, activation bytes autograd keeps for backward (exact, from `saved_tensors_hooks`) and the
   step's peak memory (CUDA: `max_memory_allocated`; CPU: peak resident set size above the pre-step level, read from
   /proc; the script re-executes itself with MALLOC_MMAP_THRESHOLD_=65536 so that glibc serves every tensor of 64 KiB
   or more by mmap from the start and freed tensors leave the resident set instead of being reused unseen).

    python benchmarks/sampling.py [--size 32] [--n 8] [--steps 10] [--repeats 6] [--size3d 32] [--batch3d 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler
from omegaconf import OmegaConf

from synthmed.config import CONF_DIR, instantiate, register_resolvers


# ---- shared helpers (also used by benchmarks/gpu.py) ---------------------------------------------------------------
def ddpm_model(root: Path, size: int, spatial_dims: int, steps: int | None, *overrides: str):
    """The default DDPMModule of conf/model/ddpm.yaml (DDIM with `steps` steps) for `size`-sided 2D images or 3D
    volumes; `overrides` may choose another model (`model=vae`, then `steps=None`)."""
    register_resolvers()
    dataset = "phantom3d" if spatial_dims == 3 else "phantom2d"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        steps_key = [f"model.process.num_inference_steps={steps}"] if steps else []  # models with a process
        cfg = compose("train", overrides=[f"paths.root={root}", f"dataset={dataset}", f"dataset.size={size}",
                                          *steps_key, *overrides])
    pl.seed_everything(0)
    model = instantiate(cfg.model, "model")
    model.schedule_name = OmegaConf.select(cfg, "model.process.schedule")  # for MONAI's scheduler, built anew
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def monai_ddim(process, schedule: str) -> DDIMScheduler:
    """A MONAI DDIMScheduler with the settings of synthmed's GaussianDiffusion `process` (built anew, not shared)."""
    scheduler = DDIMScheduler(num_train_timesteps=process.num_train_timesteps, schedule=schedule,
                              prediction_type=process.prediction_type, clip_sample=process.sampler.clip_sample)
    if not torch.equal(scheduler.alphas_cumprod, process.sampler.alphas_cumprod):
        raise ValueError(f"MONAI's DDIMScheduler(schedule={schedule}) differs from the model's noise schedule")
    scheduler.set_timesteps(process.num_inference_steps)
    return scheduler


def time_call(fn, device: torch.device, clock=time.perf_counter):
    """(seconds, result) of `fn()`, with CUDA work finished on both ends. `clock=time.process_time` counts this
    process's CPU seconds instead of wall seconds (robust to other load on a shared CPU machine)."""
    sync(device)
    start = clock()
    result = fn()
    sync(device)
    return clock() - start, result


def sampling_side_by_side(model, n: int, repeats: int, device: torch.device, autocast=None) -> dict:
    """images/s of synthmed's `model.sample(n)` and of MONAI's DiffusionInferer on the same net, noise, schedule."""
    model = model.to(device).eval()
    model.sample_batch_size = n
    net = model.sampling_net()
    scheduler = monai_ddim(model.process, model.schedule_name)
    inferer = DiffusionInferer(scheduler)
    gens = model.per_sample_generators(n, torch.Generator().manual_seed(0))
    noise = torch.stack([torch.randn(model.noise_shape(), generator=g) for g in gens]).to(device)
    ctx = autocast or torch.autocast(device.type, enabled=False)

    def theirs():
        with ctx:
            return inferer.sample(input_noise=noise, diffusion_model=net, scheduler=scheduler, verbose=False)

    def ours():
        with ctx:
            return model.sample(n, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        time_call(theirs, device), time_call(ours, device)  # warm-up (allocator, autotuning, compilation)
        times, cpu, diffs = {"monai": [], "synthmed": []}, {"monai": [], "synthmed": []}, []
        for r in range(repeats):
            outs, order = {}, [("monai", theirs), ("synthmed", ours)]
            for key, fn in order if r % 2 == 0 else order[::-1]:  # ABBA: neither side always goes first
                cpu0 = time.process_time()
                seconds, outs[key] = time_call(fn, device)
                times[key].append(seconds)
                cpu[key].append(time.process_time() - cpu0)
            diffs.append(float((outs["monai"].float().clamp(-1, 1) - outs["synthmed"]).abs().max()))  # clamped
    rates = {k: n / statistics.median(v) for k, v in times.items()}
    cpu_rates = {k: n / statistics.median(v) for k, v in cpu.items()}
    # The ratio of each adjacent pair of runs cancels slow drift of the machine's load; their median is reported.
    paired = [a / b for a, b in zip(times["monai"], times["synthmed"])]
    paired_cpu = [a / b for a, b in zip(cpu["monai"], cpu["synthmed"])]
    return {"n": n, "repeats": repeats, "steps": model.process.num_inference_steps, "images_per_s": rates,
            "ratio": statistics.median(paired), "ratio_range": [min(paired), max(paired)],
            "images_per_cpu_s": cpu_rates, "ratio_cpu_time": statistics.median(paired_cpu),
            "ratio_cpu_time_range": [min(paired_cpu), max(paired_cpu)], "max_abs_diff": max(diffs)}


class PeakRSS:
    """Peak resident memory of a code block above its starting level (Linux /proc; CPU tensors). Meaningful only in a
    process started with MALLOC_MMAP_THRESHOLD_ set (see `main`): otherwise freed heap memory is reused unseen."""

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {key}")

    def __enter__(self):
        gc.collect()
        self.base = self._status("VmRSS:")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak) to the current RSS
        return self

    def __exit__(self, *exc) -> None:
        self.peak = self._status("VmHWM:") - self.base


def saved_activation_bytes(step) -> int:
    """Bytes of the tensors autograd keeps for backward while `step()` runs (checkpointing drops most of them)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return total


def train_step_fn(model, x: torch.Tensor, autocast=None):
    """One diffusion training step of `model` on `x`: loss, backward, AdamW step (what the Trainer does per batch)."""
    opt = model.optimizer_factory(model.trainable_parameters())
    ctx = autocast or torch.autocast(x.device.type, enabled=False)

    def step():
        with ctx:
            loss = model.process.loss(model.net, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed_peak(step, device: torch.device) -> tuple[float, int]:
    """(seconds, peak bytes above the starting level) of one `step()`."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        seconds, _ = time_call(step, device)
        return seconds, torch.cuda.max_memory_allocated(device) - base
    with PeakRSS() as rss:
        seconds, _ = time_call(step, device)
    return seconds, rss.peak


def checkpointing_side_by_side(models: dict, x: torch.Tensor, repeats: int) -> dict:
    """Step time, kept activations and peak memory of a training step per model ({'plain': m, 'checkpointed': m}),
    measured alternately after one warm-up step each."""
    device = x.device
    steps = {k: train_step_fn(m.to(device).train(), x) for k, m in models.items()}
    for step in steps.values():
        step()  # warm-up: optimizer state allocated, kernels chosen
    result = {k: {"time_s": [], "peak_bytes": [], "saved_bytes": saved_activation_bytes(s)} for k, s in steps.items()}
    for _ in range(repeats):
        for key, step in steps.items():
            seconds, peak = timed_peak(step, device)
            result[key]["time_s"].append(seconds)
            result[key]["peak_bytes"].append(peak)
    for r in result.values():
        r["time_s"], r["peak_bytes"] = statistics.median(r["time_s"]), statistics.median(r["peak_bytes"])
    plain, ckpt = result["plain"], result["checkpointed"]
    result["ratios"] = {"peak_memory": ratio(ckpt["peak_bytes"], plain["peak_bytes"]),
                        "saved_activations": ratio(ckpt["saved_bytes"], plain["saved_bytes"]),
                        "step_time": ratio(ckpt["time_s"], plain["time_s"])}
    return result


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is not positive (a peak too small to register on a tiny --dry input)."""
    return a / b if b > 0 else None


def checkpointing_pair(root: Path, size: int, *overrides: str) -> dict:
    """The same 3D DDPM (same initial weights) without and with activation checkpointing."""
    plain = ddpm_model(root, size, 3, 2, *overrides)
    ckpt = ddpm_model(root, size, 3, 2, "model.activation_checkpointing=true", *overrides)
    ckpt.load_state_dict(plain.state_dict())
    return {"plain": plain, "checkpointed": ckpt}


def machine() -> dict:
    import monai

    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


# ---- CPU run --------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32, help="2D image side for sampling (pixels)")
    p.add_argument("--n", type=int, default=8, help="images per sampling call")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps (benchmarks/gpu.py: 50)")
    p.add_argument("--repeats", type=int, default=6, help="alternating repeats per side (sampling)")
    p.add_argument("--repeats3d", type=int, default=2, help="alternating repeats per side (3D step)")
    p.add_argument("--size3d", type=int, default=32, help="3D volume side for the training step (voxels)")
    p.add_argument("--batch3d", type=int, default=1, help="volumes per 3D training step")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    device = torch.device("cpu")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = ddpm_model(Path(tmp), args.size, 2, args.steps)
        sampling = sampling_side_by_side(model, args.n, args.repeats, device)
        pair = checkpointing_pair(Path(tmp), args.size3d)
    x = torch.rand(args.batch3d, 1, args.size3d, args.size3d, args.size3d, generator=torch.Generator().manual_seed(0))
    memory = checkpointing_side_by_side(pair, x * 2 - 1, args.repeats3d)
    out = {"machine": machine(), "args": vars(args) | {"json": None}, "sampling": sampling, "checkpointing": memory}
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


def report(out: dict) -> None:
    s, m, a = out["sampling"], out["checkpointing"], out["args"]
    print(f"machine: {out['machine']}")
    print(f"\nDDIM-{s['steps']} sampling, {a['size']}x{a['size']}, {s['n']} images per call, median of "
          f"{s['repeats']} alternating repeats")
    print(f"  MONAI DiffusionInferer : {s['images_per_s']['monai']:.3f} images/s")
    print(f"  synthmed sample()      : {s['images_per_s']['synthmed']:.3f} images/s")
    print(f"  ratio synthmed/MONAI   : {s['ratio']:.3f} wall time (pairs {s['ratio_range'][0]:.3f}-"
          f"{s['ratio_range'][1]:.3f}), {s['ratio_cpu_time']:.3f} CPU time (pairs {s['ratio_cpu_time_range'][0]:.3f}-"
          f"{s['ratio_cpu_time_range'][1]:.3f}); target >= 0.95")
    print(f"  max |difference| of the two outputs (same noise): {s['max_abs_diff']:.2e}")
    print(f"\n3D DDPM training step, {a['batch3d']} x {a['size3d']}^3, default UNet")
    for key in ("plain", "checkpointed"):
        r = m[key]
        print(f"  {key:<13}: {r['time_s']:.3f} s/step, peak +{r['peak_bytes'] / 2**20:.1f} MiB, "
              f"activations kept {r['saved_bytes'] / 2**20:.1f} MiB")
    ratios = m["ratios"]
    print("  ratios checkpointed/plain: " + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in ratios.items()
                                                     if v is not None))


if __name__ == "__main__":
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # glibc reads it at start-up only: run again with it set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    main(sys.argv[1:])
