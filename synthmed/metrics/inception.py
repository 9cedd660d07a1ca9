"""Inception features for FID/KID/precision-recall: pytorch-fid's network, offline weights, recorded provenance.

The network is pytorch-fid's ``InceptionV3`` (the TF-ported "FID Inception", Heusel et al. 2017, NeurIPS), built
while its internal ``load_state_dict_from_url`` is replaced by a local ``torch.load(weights_only=True)``: same
architecture and numbers as ``python -m pytorch_fid``, but nothing is ever downloaded and nothing is unpickled.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytorch_fid.inception as pfi
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import synthmed
from synthmed.data.splits import file_sha256

log = logging.getLogger(__name__)

WEIGHTS_FILE = Path(pfi.FID_WEIGHTS_URL).name  # pt_inception-2015-12-05-6726825d.pth, pytorch-fid's cache name
EXTRACTOR_NAME = "inception-v3-fid"
RESIZE_RULE = "bilinear 299x299 align_corners=False (pytorch-fid InceptionV3 resize_input=True)"
IMPLEMENTATION = f"synthmed-{synthmed.__version__} (pytorch-fid InceptionV3)"
VALID_DIMS = tuple(pfi.InceptionV3.BLOCK_INDEX_BY_DIM)  # (64, 192, 768, 2048)

_PATCH_LOCK = threading.Lock()  # the builder swaps a module global of pytorch_fid; one build at a time


def default_weights_path() -> Path:
    """Where pytorch-fid (through torch.hub) caches the FID Inception weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights(weights: str | os.PathLike | None = None, setting: str = "metrics.fid_weights") -> Path:
    """Return the weights file to use, or raise FileNotFoundError naming the exact file and folder expected.

    Args:
        weights: explicit path (config ``metrics.fid_weights``); None means pytorch-fid's torch.hub cache location.
        setting: how the caller's user passes a path, named in the error (`synthmed fid` uses ``--weights``).
    """
    path = Path(weights).expanduser() if weights else default_weights_path()
    if not path.is_file():
        how = f"pass {setting} PATH" if setting.startswith("-") else f"set {setting} to its path"
        raise FileNotFoundError(
            f"FID Inception weights not found: expected file '{path.name}' in folder '{path.parent}'. "
            "synthmed never downloads unless asked: run `synthmed weights fetch` once (or copy the file from "
            f"{pfi.FID_WEIGHTS_URL}), or {how}."
        )
    return path


# torch.hub names a weights file `<name>-<first 8 hex digits of its sha256>.pth`; pytorch-fid's keeps that name.
OFFICIAL_SHA256_PREFIX = WEIGHTS_FILE.rsplit("-", 1)[-1].split(".")[0]


def is_official(path: str | os.PathLike) -> bool:
    """Whether a weights file is pytorch-fid's (its sha256 starts with the prefix in the official file name)."""
    return weights_sha256(path).startswith(OFFICIAL_SHA256_PREFIX)


def weights_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file (cached per path, size and mtime: hashing ~100 MB costs ~0.3 s)."""
    return file_sha256(path)


def load_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a state dict with ``weights_only=True`` (never a pickle fallback)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"weights: {path} does not hold a state dict (got {type(state).__name__})")
    return state


def build_inception(weights: str | os.PathLike, dims: int = 2048) -> nn.Module:
    """pytorch-fid's ``InceptionV3`` returning the block for ``dims``, loaded from a local file, in eval mode."""
    if dims not in VALID_DIMS:
        raise ValueError(f"dims must be one of {VALID_DIMS}, got {dims}")
    state = load_weights(weights)
    with _PATCH_LOCK:
        original = pfi.load_state_dict_from_url
        pfi.load_state_dict_from_url = lambda *args, **kwargs: state  # pytorch-fid's only download point
        try:
            net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]], resize_input=True, normalize_input=True)
        finally:
            pfi.load_state_dict_from_url = original
    return net.eval()


class InceptionExtractor(nn.Module):
    """Inception features of images in [-1, 1]; grayscale is replicated to RGB, resize per ``RESIZE_RULE``.

    Args:
        weights: weights file; None = ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``.
        dims: feature dimension, one of 64, 192, 768, 2048 (pytorch-fid's blocks; 2048 = pool3, the FID standard).
        device: where the network runs.
    """

    def __init__(self, weights: str | os.PathLike | None = None, dims: int = 2048, device: str | torch.device = "cpu"):
        super().__init__()
        self.weights_path = resolve_weights(weights)
        self.dims = dims
        # channels_last: oneDNN/cuDNN convolutions run ~1.3x faster; results differ from NCHW only by float round-off
        self.net = build_inception(self.weights_path, dims).to(device, memory_format=torch.channels_last)
        self.device = torch.device(device)

    @property
    def provenance(self) -> dict[str, str]:
        """What makes a FID comparable: extractor, weights sha256, dims, resize rule, implementation."""
        return {
            "extractor": EXTRACTOR_NAME,
            "weights_sha256": weights_sha256(self.weights_path),
            "dims": str(self.dims),
            "resize": RESIZE_RULE,
            "implementation": IMPLEMENTATION,
        }

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Features of a batch.

        Args:
            images: ``[B, C, H, W]`` in [-1, 1], C in {1, 3}; values outside are clamped as a PNG export would.

        Returns:
            ``[B, dims]`` float32 features.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images: expected [B, C, H, W] with C in (1, 3), got {tuple(images.shape)}")
        x = (images.float().clamp(-1, 1) + 1) / 2  # pytorch-fid's network takes [0, 1] (ToTensor of a PNG)
        return self.forward_unit(x.expand(-1, 3, -1, -1))  # grayscale -> RGB by replication, as convert('RGB')

    @torch.no_grad()
    def forward_unit(self, x: Tensor) -> Tensor:
        """Features of ``[B, 3, H, W]`` RGB in [0, 1] (what pytorch-fid feeds its network) -> ``[B, dims]``."""
        out = self.net(x.to(self.device).contiguous(memory_format=torch.channels_last))[0]
        if out.shape[2:] != (1, 1):  # blocks below pool3 are spatial; pytorch-fid averages them the same way
            out = nn.functional.adaptive_avg_pool2d(out, (1, 1))
        return out.flatten(1).float().cpu()

    def extract(self, images: Tensor, batch_size: int = 50, progress: bool = False) -> Tensor:
        """Features of many images, batch by batch.

        Args:
            images: ``[N, C, H, W]`` in [-1, 1] (any device).
            batch_size: images per forward pass.
            progress: show a tqdm bar.

        Returns:
            ``[N, dims]`` float32 features on CPU.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = images.split(batch_size)
        feats = [self(chunk) for chunk in tqdm(chunks, desc="inception", disable=not progress, leave=False)]
        return torch.cat(feats) if feats else torch.empty(0, self.dims)


def make_random_fid_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a state dict with the FID Inception's exact keys and shapes but seeded random values.

    For tests and offline demos only: numbers computed with it are internally consistent (synthmed and pytorch-fid
    agree) but not comparable to published FIDs; its sha256 in the provenance tags tells them apart.
    He-normal convolutions and identity batch norms keep activations O(1) through the 90-odd layers.
    """
    import torchvision  # local import: only this test helper needs torchvision directly

    gen = torch.Generator().manual_seed(seed)
    # torchvision's inception_v3 with these arguments has the FID Inception's parameter names and shapes
    # (pytorch-fid's FIDInception* blocks subclass torchvision's and only change forward()).
    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    state = {}
    for name, value in net.state_dict().items():
        state[name] = _random_like(name, value, gen)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _random_like(name: str, value: Tensor, gen: torch.Generator) -> Tensor:
    if name.endswith("num_batches_tracked"):
        return value.clone()
    if value.ndim >= 2:  # conv or fc weight: He normal over fan-in
        fan_in = value[0].numel()
        return torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
    if name.endswith(("running_var", "bn.weight")):
        return torch.ones_like(value)
    return torch.zeros_like(value)  # biases, running means
