"""In-domain Frechet distance (``val/fd_domain``) and the encoders it shares with the conditioning metrics.

Inception is an ImageNet network: it describes grey-scale anatomy poorly and has no 3D version. The in-domain
distance uses a small ``DomainEncoder`` trained once per data set on the real training split (self-supervised:
denoising thumbnail autoencoder and noise-level regression; supervised: heads for the global covariates the data
carries, sex and age) and the Frechet distance of Heusel et al. (NeurIPS 2017) on its standardized pooled features.
The class label (the focal finding, e.g. a lesion) gets an encoder of its own: sharing the few channels with the
global covariates, the lesion head stayed near chance on held-out phantoms in 2 of 3 seeds (300 steps); alone it
learned in all 3 (64 px; balanced accuracy 0.93-0.97 after 300 steps, 0.98-1.0 after 400). Its first stage keeps
full resolution: at 32 px a lesion is a pixel or two wide, and with a stride-2 first stage the reader stayed near
chance on held-out phantoms (sensitivity 0.31, specificity 0.64, 400 steps); at full resolution it read 0.96 / 0.95
and 0.96 / 0.99 (seeds 0, 1).

Training is seeded, single-threaded on CPU and uses deterministic algorithms, so the same data and settings give
the same weights, and it leaves the caller's RNG as it found it (it may run in the middle of a training run).
Weights are cached as ``<cache_dir>/domain/<fingerprint>-<role>-<key>.pt``; the key covers the settings, the
encoder version and the content of the training images and targets, so a hit is always safe to reuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from synthmed.data.datamodule import class_balancing_weights
from synthmed.io import atomic_write
from synthmed.metrics.cache import tensor_digest
from synthmed.metrics.fid import fid_from_features
from synthmed.nets.encoder import DomainEncoder

log = logging.getLogger(__name__)

ENCODER_VERSION = 2  # bump on any change that alters a trained weight: cache keys change with it
CATEGORICAL = ("label", "sex")  # targets learned by cross-entropy heads (non-negative int covariates)
CONTINUOUS = ("age",)  # targets learned by regression heads on the standardized value
ROLES = {"domain": ("sex", "age"), "label": ("label",)}  # encoder -> the targets it learns
SELF_SUPERVISED = {"domain": True, "label": False}  # the label encoder learns its finding alone
FIRST_STRIDE = {"domain": 2, "label": 1}  # a focal finding needs every pixel; global anatomy does not
NOISE_MAX = 0.2  # largest added noise std of the self-supervised tasks, [-1, 1] units (10% of the range)


@dataclass(frozen=True)
class EncoderSettings:
    """How the encoders are built and trained; every field is part of the cache key.

    Args:
        channels: channels per encoder stage (feature dims: twice their sum).
        steps: optimizer steps on the training split.
        batch_size: images per step, drawn so that every label class is equally frequent.
        lr: AdamW learning rate, cosine-decayed to 0.
        seed: initialization, batch draws and augmentation.
    """

    channels: tuple[int, ...] = (8, 16, 32)
    steps: int = 400
    batch_size: int = 32
    lr: float = 5e-3
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        checks = {"channels": (len(self.channels) >= 1 and min(self.channels) >= 1, "a list of positive ints"),
                  "steps": (self.steps >= 1, ">= 1"), "batch_size": (self.batch_size >= 2, ">= 2"),
                  "lr": (self.lr > 0, "> 0")}
        for name, (ok, want) in checks.items():
            if not ok:
                raise ValueError(f"domain_{name} must be {want}, got {getattr(self, name)!r}")


@dataclass
class DomainModel:
    """A trained encoder, what its heads mean and where its weights come from.

    Attributes:
        role: "domain" (features for fd_domain, covariate heads) or "label" (the class head alone).
        heads: target name -> classes (categorical) or 1 (continuous).
        scale: continuous target -> (mean, std) of its training values; those heads predict standardized values.
        sha256: of the serialized weights (the cache file's bytes).
        trained: True when fitted in this process, False when loaded from the cache.
    """

    net: DomainEncoder
    role: str
    heads: dict[str, int]
    scale: dict[str, tuple[float, float]]
    settings: EncoderSettings
    sha256: str
    n_train: int
    path: Path | None = None
    trained: bool = True

    @torch.no_grad()
    def outputs(self, images: Tensor, batch_size: int = 50) -> dict[str, Tensor]:
        """``features`` ``[N, F]`` and one prediction ``[N]`` per head (class index, or value in the target's
        units) of images ``[N, C, *spatial]`` in [-1, 1]."""
        self.net.eval()
        device = next(self.net.parameters()).device
        with one_thread():
            parts = [self.net(images[i:i + batch_size].to(device)) for i in range(0, images.shape[0], batch_size)]
        out = {k: torch.cat([p[k] for p in parts]).cpu() for k in ("features", *self.heads)}
        for name in self.heads:
            if name in self.scale:
                mean, std = self.scale[name]
                out[name] = out[name][:, 0].double() * std + mean
            else:
                out[name] = out[name].argmax(1)
        return out

    def provenance(self, prefix: str) -> dict[str, str]:
        """Run tags that make a value of this encoder comparable (DESIGN.md: every FD carries its provenance)."""
        s = self.settings
        task = f"heads {sorted(self.heads)}"
        task = f"denoising thumbnail autoencoder, {task}" if SELF_SUPERVISED[self.role] else task
        encoder = (f"synthmed DomainEncoder v{ENCODER_VERSION} '{self.role}' ({self.net.spatial_dims}D, channels "
                   f"{list(s.channels)}; {task}; batch {s.batch_size}, lr {s.lr:g}, seed {s.seed})")
        return {f"{prefix}.encoder": encoder,
                f"{prefix}.weights_sha256": self.sha256, f"{prefix}.dims": str(self.net.feature_dims),
                f"{prefix}.train_steps": str(s.steps), f"{prefix}.n_train": str(self.n_train),
                f"{prefix}.weights_file": str(self.path) if self.path else "not cached (no cache_dir)"}


def fd_domain(model: DomainModel, fake: Tensor, real: Tensor, batch_size: int = 50) -> float:
    """Frechet distance between the encoder features of ``fake`` and ``real`` ``[N, C, *spatial]``."""
    return fid_from_features(model.outputs(fake, batch_size)["features"], model.outputs(real, batch_size)["features"])


# --------------------------------------------------------------------------------------------------------- training
def targets_of(train_cond: Mapping[str, Tensor] | None, n: int) -> dict[str, Tensor]:
    """The known targets in ``train_cond`` (``CATEGORICAL`` as int64, ``CONTINUOUS`` as float64), each ``[n]``."""
    out = {}
    for name, values in (train_cond or {}).items():
        if name not in CATEGORICAL + CONTINUOUS:
            continue
        t = torch.as_tensor(values)
        if t.shape != (n,):
            raise ValueError(f"train_cond[{name!r}]: expected shape ({n},), one value per training image, "
                             f"got {tuple(t.shape)}")
        if name in CATEGORICAL and (int(t.min()) < 0 or not torch.equal(t, t.round())):
            raise ValueError(f"train_cond[{name!r}]: expected non-negative integer classes, got {t.unique()[:5]}")
        out[name] = t.long() if name in CATEGORICAL else t.double()
    return out


def fit_encoder(train: Tensor, targets: Mapping[str, Tensor], settings: EncoderSettings, role: str = "domain",
                device: str = "cpu") -> DomainModel:
    """Train a fresh encoder of ``role`` on ``train`` ``[N, C, *spatial]`` in [-1, 1] and its ``ROLES`` targets."""
    s = settings
    targets = {k: v for k, v in targets.items() if k in ROLES[role]}
    heads = {k: (max(int(v.max()) + 1, 2) if k in CATEGORICAL else 1) for k, v in targets.items()}
    scale = {k: (float(v.mean()), float(v.std()) or 1.0) for k, v in targets.items() if k in CONTINUOUS}
    if SELF_SUPERVISED[role]:
        heads["noise_level"], scale["noise_level"] = 1, (0.0, NOISE_MAX)
    gen = torch.Generator().manual_seed(s.seed)  # batch draws and augmentation, apart from the global RNG
    weights = _balancing_weights(targets.get("label"), train.shape[0])
    with _reproducible(device, s.seed), torch.inference_mode(False), torch.enable_grad():  # callers may not grad
        net = DomainEncoder(train.ndim - 2, train.shape[1], s.channels, heads, FIRST_STRIDE[role]).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=s.lr)
        net.train()
        for step in range(s.steps):
            for group in opt.param_groups:
                group["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * step / s.steps))
            idx = torch.multinomial(weights, s.batch_size, replacement=True, generator=gen)
            x = _augment(train[idx], gen).to(device)
            batch = {k: v[idx].to(device) for k, v in targets.items()}
            x_in = x
            if SELF_SUPERVISED[role]:
                x_in, batch["noise_level"] = _corrupt(x, gen)
            loss = _loss(net(x_in), x, batch, scale, SELF_SUPERVISED[role])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        _standardize_features(net, train, device)
    sha = hashlib.sha256(_serialize(net, heads, scale)).hexdigest()
    return DomainModel(net, role, heads, scale, s, sha, train.shape[0])


@torch.no_grad()
def _standardize_features(net: DomainEncoder, train: Tensor, device: str, batch_size: int = 64) -> None:
    """Set the feature buffers to the training set's feature mean and std (a dead channel keeps std 1)."""
    feats = torch.cat([net(train[i:i + batch_size].to(device))["features"] for i in range(0, len(train), batch_size)])
    std = feats.std(0) if len(feats) > 1 else torch.ones_like(feats[0])
    net.feature_mean.copy_(feats.mean(0))
    net.feature_std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))


def _corrupt(x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Half the images get Gaussian noise of a std uniform in [0, NOISE_MAX]; returns them and the stds ``[B]``.

    Predicting the std (self-supervised, like the synthetic distortions of blind quality assessment, e.g. RankIQA,
    Liu et al. ICCV 2017) keeps a noise detector in the features, which the low-frequency thumbnail and covariate
    tasks do not: on 32 px phantoms, added noise of std 0.1 raised fd_domain 1.3x without it and 2.4x with it."""
    b = x.shape[0]
    sigma = NOISE_MAX * torch.rand(b, generator=gen) * (torch.rand(b, generator=gen) < 0.5)
    noise = torch.randn(x.shape, generator=gen) * sigma.view(b, *(1,) * (x.ndim - 1))
    return x + noise.to(x.device), sigma.double().to(x.device)


def _loss(out: dict[str, Tensor], x: Tensor, targets: dict[str, Tensor], scale: dict, reconstruct: bool) -> Tensor:
    """Thumbnail MSE of the clean ``x`` (if ``reconstruct``) + cross-entropy per categorical and smooth L1 per
    standardized continuous target."""
    loss = F.mse_loss(out["thumbnail"], _thumbnail(x, out["thumbnail"].shape[2:])) if reconstruct else 0.0
    for name, y in targets.items():
        if name in scale:
            mean, std = scale[name]
            loss = loss + F.smooth_l1_loss(out[name][:, 0], ((y - mean) / std).float())
        else:
            loss = loss + F.cross_entropy(out[name], y)
    return loss


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Flips of every spatial axis (per image), a quarter turn in the H-W plane and a circular shift of up to 1/16
    of the side (per batch). Without them the lesion head memorized the ~50 lesion images of the default phantom
    and read held-out lesions at chance; with them it reads most (64 px)."""
    b, dims = x.shape[0], tuple(range(2, x.ndim))
    for d in dims:
        flip = (torch.rand(b, generator=gen) < 0.5).view(b, *(1,) * (x.ndim - 1))
        x = torch.where(flip, x.flip(d), x)
    turns = int(torch.randint(4, (1,), generator=gen))
    x = torch.rot90(x, turns, (2, 3)) if x.shape[2] == x.shape[3] else x
    shifts = [int(torch.randint(-(x.shape[d] // 16), x.shape[d] // 16 + 1, (1,), generator=gen)) for d in dims]
    return torch.roll(x, shifts, dims)


def _thumbnail(x: Tensor, size) -> Tensor:
    """The reconstruction target: ``x`` averaged down to the bottleneck's resolution."""
    return (F.adaptive_avg_pool2d if x.ndim == 4 else F.adaptive_avg_pool3d)(x, tuple(size))


def _balancing_weights(labels: Tensor | None, n: int) -> Tensor:
    """Sampling weights that draw every class equally often: the 10% lesion class is half of every batch."""
    return torch.ones(n, dtype=torch.float64) if labels is None else class_balancing_weights(labels)


@contextlib.contextmanager
def one_thread():
    """One CPU thread: the reduction order, hence the last bits of the weights, can depend on the thread count,
    and for convolutions this small one thread is also faster on a shared CPU (measured on 2 busy cores: 2 threads
    8x slower per training step and 8-17x slower in inference)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _reproducible(device: str, seed: int):
    """Seeded initialization without touching the caller's RNG streams, deterministic algorithms, one thread."""
    cuda = torch.device(device).type == "cuda"
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    with torch.random.fork_rng(devices=[torch.device(device)] if cuda else []), one_thread():
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, on CUDA ops without one
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


# ---------------------------------------------------------------------------------------------------------- caching
class EncoderBank:
    """The encoders of one MetricSuite: from memory, else ``<cache_dir>/domain/``, else trained (and cached).

    Args:
        settings: how encoders are built and trained.
        cache_dir: the suite's cache folder (None: trained once per process, not stored).
        device: where encoders train and run.
    """

    def __init__(self, settings: EncoderSettings, cache_dir: str | os.PathLike | None = None, device: str = "cpu"):
        self.settings, self.device = settings, device
        self.root = Path(cache_dir).expanduser() / "domain" if cache_dir else None
        self._memory: dict[str, DomainModel] = {}

    def get(self, role: str, train: Tensor, train_cond: Mapping[str, Tensor] | None = None,
            fingerprint: str | None = None, digest: str | None = None) -> DomainModel:
        """The ``role`` encoder of this training set.

        Args:
            role: a key of ``ROLES``.
            train: training images ``[N, C, *spatial]`` in [-1, 1].
            train_cond: per-image targets ``{"label": [N], "sex": [N], "age": [N]}``, any subset; others ignored.
            fingerprint: the data set's fingerprint, for a readable file name (None: a digest of ``train``).
            digest: ``tensor_digest(train)`` when the caller has it already.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {tuple(ROLES)}, got {role!r}")
        targets = {k: v for k, v in targets_of(train_cond, train.shape[0]).items() if k in ROLES[role]}
        digest = digest or tensor_digest(train)
        fields = {"version": ENCODER_VERSION, "role": role, "settings": asdict(self.settings), "train": digest,
                  "targets": {k: tensor_digest(v) for k, v in sorted(targets.items())}}
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        if key not in self._memory:
            while len(self._memory) >= 4:  # both roles of the current and of a previous training set, no more
                self._memory.pop(next(iter(self._memory)))
            self._memory[key] = self._load_or_fit(role, key, train, targets, fingerprint or f"data{digest[:16]}")
        return self._memory[key]

    def _load_or_fit(self, role, key, train, targets, fingerprint) -> DomainModel:
        name = re.sub(r"[^A-Za-z0-9_.]", "_", fingerprint)[:64]
        path = self.root / f"{name}-{role}-{key}.pt" if self.root else None
        model = _load(path, role, self.settings, train, self.device) if path and path.is_file() else None
        if model is None:
            fitted = fit_encoder(train, targets, self.settings, role, self.device)
            data = _serialize(fitted.net, fitted.heads, fitted.scale)
            if path:
                atomic_write(path, data)
            # Use the encoder as a later run loads it from the cache, not the object training left behind: its
            # features then match a cached encoder's to the last bit (measured: fd_domain differed by 3e-5
            # relative between a freshly trained and a cached encoder of the same weights).
            model = _from_bytes(data, role, self.settings, train, self.device, path)
            model.trained = True
        return model


def _serialize(net: DomainEncoder, heads: Mapping[str, int], scale: Mapping[str, tuple[float, float]]) -> bytes:
    """The cache file: tensors and plain values only, so it loads with ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save({"version": ENCODER_VERSION, "state_dict": net.state_dict(), "heads": dict(heads),
                "scale": {k: list(v) for k, v in scale.items()}}, buffer)
    return buffer.getvalue()


def _load(path: Path, role: str, settings: EncoderSettings, train: Tensor, device: str) -> DomainModel | None:
    """The cached encoder, or None (with a warning) when the file is unreadable: it is then retrained."""
    return _from_bytes(path.read_bytes(), role, settings, train, device, path)


def _from_bytes(data: bytes, role: str, settings: EncoderSettings, train: Tensor, device: str,
                path: Path | None) -> DomainModel | None:
    """An encoder from its serialized form (`_serialize`), or None (with a warning) when it cannot be read."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        heads = {str(k): int(v) for k, v in payload["heads"].items()}
        net = DomainEncoder(train.ndim - 2, train.shape[1], settings.channels, heads, FIRST_STRIDE[role])
        net.load_state_dict(payload["state_dict"])
        scale = {str(k): (float(v[0]), float(v[1])) for k, v in payload["scale"].items()}
    except Exception as err:  # noqa: BLE001 - an unreadable or mismatched file is a miss, never a wrong encoder
        log.warning("ignoring unreadable domain-encoder file %s: %s", path or "(in memory)", err)
        return None
    return DomainModel(net.to(device).eval(), role, heads, scale, settings, hashlib.sha256(data).hexdigest(),
                       train.shape[0], path, trained=False)


