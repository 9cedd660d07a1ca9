"""Noise processes: they own timesteps, training targets and sampling loops, and no weights (diffusers' split).

A model module (ddpm.py, ldm.py, ...) owns the network and calls `process.loss(net, x0)` to train and
`process.sample(net, noise, generators)` to generate. The schedulers are MONAI's; this file is the glue that makes
DDPM, DDIM and rectified flow interchangeable from config.

`net` is any callable `net(x_t, timesteps=t, **net_kwargs) -> Tensor` of the shape of `x_t` (MONAI's
`DiffusionModelUNet` in practice), so guidance wrappers and conditioning pass straight through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler
from torch import Tensor
from tqdm.auto import tqdm

Net = Callable[..., Tensor]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SAMPLERS = ("ddim", "ddpm")


def _device_generator(row: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded from a sample's own CPU generator, so stochastic steps stay per-sample."""
    seed = int(torch.randint(2**62, (1,), generator=row))
    return torch.Generator(device=device).manual_seed(seed)


def _randn(shape: Sequence[int], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise drawn on the CPU generator (when given) and moved to `like`'s device and dtype."""
    return torch.randn(tuple(shape), generator=generator).to(like) if generator is not None else torch.randn_like(like)


class GaussianDiffusion:
    """Denoising diffusion (Ho et al. 2020, https://arxiv.org/abs/2006.11239) with DDIM sampling
    (Song et al. 2021, https://arxiv.org/abs/2010.02502) on MONAI's DDPM/DDIM schedulers.

    Args:
        num_train_timesteps: length T of the forward noising chain.
        schedule: MONAI beta schedule name (`linear_beta`, `scaled_linear_beta`, `cosine`, `sigmoid_beta`).
        prediction_type: what the network predicts: `epsilon`, `v_prediction` or `sample`.
        sampler: `ddim` (deterministic for eta=0, few steps) or `ddpm` (ancestral, stochastic).
        num_inference_steps: denoising steps at sampling time (<= num_train_timesteps).
        eta: DDIM noise weight; 0 makes sampling a deterministic map of the initial noise.
        clip_sample: clip the predicted x0 to [-1, 1] at each step (images live in [-1, 1]).
    """

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "linear_beta",
                 prediction_type: str = "epsilon", sampler: str = "ddim", num_inference_steps: int = 50,
                 eta: float = 0.0, clip_sample: bool = True) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got '{prediction_type}'")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got '{sampler}'")
        if not 1 <= num_inference_steps <= num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, num_train_timesteps={num_train_timesteps}], "
                             f"got {num_inference_steps}")
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        self.sampler_name = sampler
        self.num_inference_steps = num_inference_steps
        self.eta = eta
        common = dict(num_train_timesteps=num_train_timesteps, schedule=schedule,
                      prediction_type=prediction_type, clip_sample=clip_sample)
        self.train_scheduler = DDPMScheduler(**common)
        self.sampler = DDIMScheduler(**common) if sampler == "ddim" else DDPMScheduler(**common)

    def loss(self, net: Net, x0: Tensor, generator: torch.Generator | None = None, **net_kwargs) -> Tensor:
        """Mean squared error of the network's prediction at a random timestep per image.

        Args:
            net: the denoising network.
            x0: clean images `[B, C, *spatial]` in [-1, 1].
            generator: CPU generator for noise and timesteps (validation); `None` uses the global RNG (training).
        """
        noise = _randn(x0.shape, x0, generator)
        t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        pred = net(x_t, timesteps=t, **net_kwargs)
        return F.mse_loss(pred.float(), self._target(x0, noise, t).float())

    def _target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.train_scheduler.get_velocity(x0, noise, t)
        return x0

    @torch.no_grad()
    def sample(self, net: Net, noise: Tensor, generators: Sequence[torch.Generator] | None = None,
               progress: bool = False, **net_kwargs) -> Tensor:
        """Denoise `noise` `[B, C, *spatial]` into images; stochastic steps draw from each row's generator."""
        self.sampler.set_timesteps(self.num_inference_steps, device=noise.device)
        step_gens = [_device_generator(g, noise.device) for g in generators] if generators else None
        x = noise
        for t in tqdm(self.sampler.timesteps, desc="sampling", disable=not progress, leave=False):
            t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            x = self._step(net(x, timesteps=t_batch, **net_kwargs), int(t), x, step_gens)
        return x

    def _step(self, out: Tensor, t: int, x: Tensor, gens: list[torch.Generator] | None) -> Tensor:
        deterministic = self.sampler_name == "ddim" and self.eta == 0
        if deterministic or gens is None:
            return self._one_step(out, t, x, None)
        # One row at a time so that row i's noise comes from row i's generator whatever the batch holds.
        return torch.cat([self._one_step(out[i:i + 1], t, x[i:i + 1], g) for i, g in enumerate(gens)])

    def _one_step(self, out: Tensor, t: int, x: Tensor, gen: torch.Generator | None) -> Tensor:
        if isinstance(self.sampler, DDIMScheduler):
            return self.sampler.step(out, t, x, eta=self.eta, generator=gen)[0]
        return self.sampler.step(out, t, x, generator=gen)[0]


class RectifiedFlow:
    """Rectified flow (Liu et al. 2022, https://arxiv.org/abs/2209.03003) on MONAI's RFlowScheduler.

    The network predicts the velocity `x0 - noise`; sampling integrates it with Euler steps from pure noise.

    Args:
        num_train_timesteps: discretisation of t in [0, 1] seen by the network's timestep embedding.
        num_inference_steps: Euler steps at sampling time.
        sample_method: training-time t distribution, `uniform` or `logit-normal`.
    """

    def __init__(self, num_train_timesteps: int = 1000, num_inference_steps: int = 30,
                 sample_method: str = "uniform") -> None:
        if not 1 <= num_inference_steps <= num_train_timesteps:
            raise ValueError(f"num_inference_steps must be in [1, num_train_timesteps={num_train_timesteps}], "
                             f"got {num_inference_steps}")
        self.num_train_timesteps = num_train_timesteps
        self.num_inference_steps = num_inference_steps
        self.scheduler = RFlowScheduler(num_train_timesteps=num_train_timesteps, sample_method=sample_method)

    def loss(self, net: Net, x0: Tensor, generator: torch.Generator | None = None, **net_kwargs) -> Tensor:
        """MSE between predicted and true velocity at a random t per image (see GaussianDiffusion.loss)."""
        noise = _randn(x0.shape, x0, generator)
        if generator is None:
            t = self.scheduler.sample_timesteps(x0)
        else:
            t = (torch.rand(x0.shape[0], generator=generator) * self.num_train_timesteps).long().to(x0.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        pred = net(x_t, timesteps=t, **net_kwargs)
        return F.mse_loss(pred.float(), (x0 - noise).float())

    @torch.no_grad()
    def sample(self, net: Net, noise: Tensor, generators: Sequence[torch.Generator] | None = None,
               progress: bool = False, **net_kwargs) -> Tensor:
        """Euler-integrate the learned velocity from `noise` `[B, C, *spatial]` (deterministic: generators unused)."""
        numel = int(torch.tensor(noise.shape[2:]).prod())
        self.scheduler.set_timesteps(self.num_inference_steps, device=noise.device, input_img_size_numel=numel)
        times = self.scheduler.timesteps
        nexts = torch.cat([times[1:], times.new_zeros(1)])
        x = noise
        for t, t_next in tqdm(list(zip(times, nexts)), desc="sampling", disable=not progress, leave=False):
            t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            x = self.scheduler.step(net(x, timesteps=t_batch, **net_kwargs), int(t), x, int(t_next))[0]
        return x
