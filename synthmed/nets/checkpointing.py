"""Activation checkpointing for MONAI's `DiffusionModelUNet`: trade compute for memory in 3D training.

MONAI's `AutoencoderKL` has its own switch (`use_checkpoint`, conf/model/vae.yaml: `autoencoder.use_checkpoint`);
`DiffusionModelUNet` has none in MONAI 1.6. Here each of its down, middle and up blocks is wrapped with PyTorch's
`checkpoint_wrapper` (non-reentrant `torch.utils.checkpoint`, the wrapper Lightning's FSDP strategy uses): the
block's inner activations are not kept for backward but recomputed, so training memory grows with the number of
blocks' outputs instead of every layer's. Forward values and gradients are those of the plain network.

The wrapper's state-dict hooks strip its `_checkpoint_wrapped_module.` prefix, so checkpoints of a wrapped network
have the plain network's keys and load into either (tests/test_memory.py checks both directions).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)

UNET_BLOCKS = ("down_blocks", "middle_block", "up_blocks")  # DiffusionModelUNet attributes holding its blocks


def unet_blocks(net: nn.Module) -> list[nn.Module]:
    """The down, middle and up blocks of a MONAI `DiffusionModelUNet` (each called once per forward)."""
    missing = [name for name in UNET_BLOCKS if not hasattr(net, name)]
    if missing:
        raise ValueError(f"activation_checkpointing: net {type(net).__name__} has no {missing}; it applies to "
                         f"MONAI's DiffusionModelUNet")
    blocks = [*net.down_blocks, net.middle_block, *net.up_blocks]
    return [b for b in blocks if not isinstance(b, nn.Identity)]


def checkpoint_unet(net: nn.Module) -> nn.Module:
    """Wrap every block of a `DiffusionModelUNet` in place with non-reentrant activation checkpointing.

    Returns `net` (same object). Under `torch.no_grad()` (sampling, EMA) the wrapper only runs the block.
    """
    targets = {id(b) for b in unet_blocks(net)}
    apply_activation_checkpointing(
        net, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: id(m) in targets)
    return net


def is_checkpointed(net: nn.Module) -> bool:
    """Whether `checkpoint_unet` (or another checkpoint_wrapper) was applied somewhere inside `net`."""
    return any(type(m).__name__ == "CheckpointWrapper" for m in net.modules())
