"""Class and covariate conditioning shared by the conditional families (`model.cond=label|attrs|both`).

A condition is a dict of per-sample tensors, e.g. `{"label": [B] long, "age": [B] float, "sex": [B] float}`,
taken from a batch (`label`, `attrs`) or asked for at sampling time (`synthmed sample cond.label=1`). It is encoded
as a context vector `[B, 1, D]`: the label one-hot, then each covariate scaled to [0, 1] by its configured range.
Diffusion families (`GuidedDenoising`: ddpm, ldm) feed it to the UNet's cross-attention; the GAN feeds `[B, D]` to
its conditional normalization and projection discriminator, and keeps training conditions (`ConditionPrior`) to
sample when none is asked for. The null condition of classifier-free guidance (Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598) is that vector filled with -1, MONAI's `cfg_fill_value` convention; no real
condition can take that value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

MODES = (None, "label", "attrs", "both")
NULL_FILL = -1.0


class Conditioning:
    """Encode labels and covariates into a context vector.

    Args:
        mode: what conditions the model: None, `label`, `attrs` or `both`.
        num_classes: number of label classes.
        attr_ranges: covariate name -> [min, max] in its own unit (age in years), mapped to [0, 1].
    """

    def __init__(self, mode: str | None, num_classes: int = 2,
                 attr_ranges: Mapping[str, Sequence[float]] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"cond must be one of {MODES}, got '{mode}'")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        ranges = dict(attr_ranges or {})
        for key, bounds in ranges.items():
            if len(bounds) != 2 or bounds[1] <= bounds[0]:
                raise ValueError(f"attr_ranges.{key} must be [min, max] with max > min, got {list(bounds)}")
        if mode in ("attrs", "both") and not ranges:
            raise ValueError(f"cond={mode} needs attr_ranges naming at least one covariate")
        self.mode, self.num_classes = mode, num_classes
        self.uses_label = mode in ("label", "both")
        self.attr_ranges = {k: (float(v[0]), float(v[1])) for k, v in ranges.items()} if mode in ("attrs", "both") \
            else {}

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    @property
    def dim(self) -> int:
        """Length D of the context vector."""
        return (self.num_classes if self.uses_label else 0) + len(self.attr_ranges)

    @property
    def keys(self) -> list[str]:
        return (["label"] if self.uses_label else []) + list(self.attr_ranges)

    def from_batch(self, batch: Mapping) -> dict[str, Tensor]:
        """The condition of a training batch: `label` and the configured `attrs` entries."""
        cond = {}
        if self.uses_label:
            if "label" not in batch:
                raise KeyError(f"cond={self.mode} needs items with a 'label'; this data set has none")
            cond["label"] = batch["label"]
        for key in self.attr_ranges:
            if key not in batch.get("attrs", {}):
                raise KeyError(f"cond={self.mode} needs attrs.{key}; the data set's items have "
                               f"{sorted(batch.get('attrs', {}))}")
            cond[key] = batch["attrs"][key]
        return cond

    def encode(self, cond: Mapping[str, Tensor], device: torch.device | None = None) -> Tensor:
        """Context `[B, 1, D]` from a condition dict (every key of `self.keys` required)."""
        missing = [k for k in self.keys if k not in cond]
        extra = sorted(set(cond) - set(self.keys))
        if extra:
            raise KeyError(f"condition has {extra}, which this model does not use: it was trained with "
                           f"cond={self.mode} and reads only {self.keys}")
        if missing:
            how = ", ".join("cond.label=..." if k == "label" else f"cond.attrs.{k}=..." for k in missing)
            raise KeyError(f"condition lacks {missing}: this model was trained with cond={self.mode} and needs "
                           f"{self.keys} (when sampling, add {how})")
        parts = []
        if self.uses_label:
            labels = torch.as_tensor(cond["label"]).long()
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(f"label must be in [0, {self.num_classes - 1}], got {labels.tolist()}")
            parts.append(torch.nn.functional.one_hot(labels, self.num_classes).float())
        for key, (lo, hi) in self.attr_ranges.items():
            parts.append(((torch.as_tensor(cond[key]).float() - lo) / (hi - lo)).clamp(0, 1)[:, None])
        return torch.cat([p.to(device) for p in parts], dim=1)[:, None, :]

    def null(self, batch_size: int, device: torch.device | None = None) -> Tensor:
        """The unconditional context `[B, 1, D]`."""
        return torch.full((batch_size, 1, self.dim), NULL_FILL, device=device)

    def drop(self, context: Tensor, p: float) -> Tensor:
        """Replace each row by the null context with probability p (training for classifier-free guidance)."""
        if p <= 0:
            return context
        keep = (torch.rand(context.shape[0], device=context.device) >= p)[:, None, None]
        return torch.where(keep, context, torch.full_like(context, NULL_FILL))


def check_request(conditioning: Conditioning | None, cond: Mapping | None) -> None:
    """Refuse a sampling request a model cannot honour (before any image is written, so that no sidecar claims a
    condition the image was not made with)."""
    if not cond:
        return
    if conditioning is None or not conditioning.enabled:
        raise ValueError(f"this run was trained without conditioning (model.cond=null), so it cannot generate on "
                         f"request {sorted(cond)}: drop cond.label / cond.attrs, or train with model.cond=label|attrs|both")
    conditioning.encode(cond)  # names missing, unused or out-of-range conditions


class ConditionPrior(nn.Module):
    """The conditions seen in training, kept to sample a conditional GAN when no condition is asked for.

    A GAN has no unconditional branch (a diffusion model drops its condition instead): its images follow the
    training distribution only if the conditions do. The first `size` training conditions are kept as buffers
    (the checkpoint carries them); sample i draws one of them with its own generator.

    Args:
        size: conditions kept.
        dim: length D of a condition vector.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("rows", torch.zeros(size, dim))
        self.register_buffer("count", torch.tensor(0))

    @torch.no_grad()
    def add(self, c: Tensor) -> None:
        """Keep training conditions `c [B, D]` until the buffer is full."""
        n = min(self.rows.shape[0] - int(self.count), c.shape[0])
        if n > 0:
            self.rows[int(self.count):int(self.count) + n] = c[:n].to(self.rows)
            self.count += n

    def draw(self, generators: Sequence[torch.Generator]) -> Tensor:
        """One kept condition per generator: `[len(generators), D]`."""
        if int(self.count) == 0:
            raise RuntimeError("a conditional GAN that has not trained has no conditions to sample from: "
                               "pass cond (e.g. synthmed sample cond.label=1)")
        idx = [int(torch.randint(int(self.count), (1,), generator=g)) for g in generators]
        return self.rows[idx]


class GuidedDenoising:
    """Mixin of the conditional diffusion families (ddpm, ldm): the denoiser's context from a batch, conditioning
    dropout in training and classifier-free guidance when sampling.

    The module calls `init_conditioning` before building its denoiser and passes `**self.context(batch)` to the
    network (nothing for an unconditional model).
    """

    supports_guidance = True  # GenerativeModule's capability flag: sample/evaluate accept guidance_scale=
    conditioning: Conditioning
    cond_drop_prob: float
    guidance_scale: float

    def init_conditioning(self, net: Callable[..., nn.Module], cond: str | None, num_classes: int,
                          attr_ranges: Mapping[str, Sequence[float]] | None, cond_drop_prob: float,
                          guidance_scale: float) -> nn.Module:
        """Set up conditioning and build the denoiser from its partial constructor `net`, with cross-attention to
        the condition when `cond` is set (MONAI `DiffusionModelUNet` arguments)."""
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        self.conditioning = Conditioning(cond, num_classes, attr_ranges)
        self.cond_drop_prob, self.guidance_scale = cond_drop_prob, guidance_scale
        extra = {"with_conditioning": True, "cross_attention_dim": self.conditioning.dim} if cond else {}
        return net(**extra)

    def context(self, batch: Mapping, drop: bool = False) -> dict:
        """`{"context": [B, 1, D]}` for a conditional model (rows nulled with `cond_drop_prob` when `drop`), else
        no extra network input."""
        if not self.conditioning.enabled:
            return {}
        ctx = self.conditioning.encode(self.conditioning.from_batch(batch), self.device)
        return {"context": self.conditioning.drop(ctx, self.cond_drop_prob) if drop else ctx}

    def denoiser(self, batch_size: int, cond: dict | None = None) -> Callable[..., Tensor]:
        """The network the sampler integrates: EMA weights, plus guidance toward `cond` when given.

        A conditional model asked for no condition samples from its unconditional (null-context) branch.
        """
        net = self.sampling_net()
        if not self.conditioning.enabled:
            return net
        null = self.conditioning.null(batch_size, self.device)
        if cond is None:
            return lambda x, timesteps: net(x, timesteps=timesteps, context=null)
        return guided(net, self.conditioning.encode(cond, self.device), null, self.guidance_scale)


def set_guidance(model, scale: float | None) -> float | None:
    """Override a trained model's guidance scale for sampling (`synthmed sample|evaluate guidance_scale=...`).

    Returns the scale in effect (None for a model without guidance). Refuses a scale for a model that has no
    guidance (unconditional, or a GAN), rather than ignoring it.
    """
    guides = model.supports_guidance and model.is_conditional
    if scale is None:
        return model.guidance_scale if guides else None
    if not guides:
        raise ValueError(f"guidance_scale={scale}: this run is not a conditional diffusion model (ddpm or ldm with "
                         f"model.cond set), so it has no classifier-free guidance to scale")
    if scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {scale}")
    model.guidance_scale = float(scale)
    return model.guidance_scale


def guided(net, context: Tensor, null: Tensor, scale: float):
    """A denoiser with classifier-free guidance: `uncond + scale * (cond - uncond)` in one batched call.

    scale 1 is the plain conditional model, 0 the unconditional one, > 1 pushes samples toward the condition.
    """

    def call(x: Tensor, timesteps: Tensor) -> Tensor:
        if scale == 1.0:
            return net(x, timesteps=timesteps, context=context)
        out = net(torch.cat([x, x]), timesteps=torch.cat([timesteps, timesteps]), context=torch.cat([null, context]))
        uncond, cond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return call


def _values(spec, n: int, gen: torch.Generator) -> Tensor:
    """n values from one spec: a constant, `[min, max]` (uniform), or `{value: share}` (exact counts)."""
    if isinstance(spec, Mapping):
        shares = {float(k): float(v) for k, v in spec.items()}
        if any(v < 0 for v in shares.values()) or abs(sum(shares.values()) - 1.0) > 1e-6:
            raise ValueError(f"shares must be >= 0 and sum to 1, got {dict(spec)}")
        counts = [round(share * n) for share in shares.values()]
        counts[-1] = n - sum(counts[:-1])  # rounding leftovers go to the last value
        values = torch.cat([torch.full((c,), v) for v, c in zip(shares, counts)])
        return values[torch.randperm(n, generator=gen)]  # mixed, so every batch holds every class
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        lo, hi = (float(s) for s in spec)
        return lo + (hi - lo) * torch.rand(n, generator=gen)
    return torch.full((n,), float(spec))


def requested(label=None, attrs: Mapping | None = None, n: int = 1, seed: int = 0) -> dict[str, Tensor] | None:
    """Per-sample conditions for a sampling request (`synthmed sample cond.label=1 cond.attrs.age=75`).

    Each of `label` and `attrs.<name>` is None (not requested), a value, `[min, max]` (uniform per sample) or
    `{value: share}` (exact shares, e.g. `{0: 0.5, 1: 0.5}` to rebalance a rare class). Returns None when nothing
    is requested.
    """
    gen = torch.Generator().manual_seed(seed)
    cond = {}
    if label is not None:
        cond["label"] = _values(label, n, gen).long()
    for key, spec in (attrs or {}).items():
        if spec is not None:
            cond[key] = _values(spec, n, gen).float()
    return cond or None
