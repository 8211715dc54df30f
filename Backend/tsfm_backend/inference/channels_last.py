"""Preparing a network for channels-last inference on the CPU.

PyTorch's CPU instance norm reshapes its input to one batch of B*C channels, which forces a
channels-last tensor back to the contiguous layout and copies it twice per norm. A ``GroupNorm`` with one
group per channel computes the same function (per sample and channel, over the spatial axes, with the
same affine weight and bias) and keeps the layout. On a 128^3 region of the bundled click model the
swap takes a bf16 pass from 1.0 to 1.2 s down to 0.8 to 0.9 s on a 2-core CPU.

The parameters are shared, not copied, and their names do not change, so the state dict stays the
one the checkpoint was written with.
"""

from __future__ import annotations

import torch
from torch import nn


def group_norm_like(norm: nn.InstanceNorm3d) -> nn.GroupNorm:
    """The ``GroupNorm`` (one group per channel) equal to ``norm``, sharing its weight and bias."""
    if norm.track_running_stats:
        raise ValueError("an instance norm that tracks running statistics has no group-norm equivalent")
    channels = norm.num_features
    replacement = nn.GroupNorm(channels, channels, eps=norm.eps, affine=norm.affine)
    if norm.affine:
        replacement.weight = norm.weight
        replacement.bias = norm.bias
    return replacement.train(norm.training)


def prepare_channels_last(network: nn.Module) -> nn.Module:
    """``network`` with each ``InstanceNorm3d`` without running statistics replaced by its ``GroupNorm``
    equivalent, and its weights in channels-last layout. Changes the network in place (the function it
    computes stays the same) and returns it; a second call changes nothing."""
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.InstanceNorm3d) and not child.track_running_stats:
                setattr(module, name, group_norm_like(child))
    return network.to(memory_format=torch.channels_last_3d)
