"""The 3D adapter placed before every transformer block of the SAM-3D image encoder.

A bottleneck (width/2) with a depthwise 3x3x3 convolution in the middle, so each token mixes with its
26 neighbours in 3D: the only place where the frozen 2D SAM weights learn about the third axis besides
``rel_pos_d``, ``slice_embed`` and ``depth_embed``. The residual keeps an untrained adapter close to
the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Adapter3D(nn.Module):
    """``x + relu(linear2(relu(dwconv(relu(linear1(x))))))`` on a channels-last (B, X, Y, Z, C) grid.

    Keys: ``linear1`` (mid, C), ``conv`` depthwise (mid, 1, 3, 3, 3), ``linear2`` (C, mid).
    """

    def __init__(self, dim: int, mid_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, mid_dim)
        self.conv = nn.Conv3d(mid_dim, mid_dim, kernel_size=3, padding=1, groups=mid_dim)
        self.linear2 = nn.Linear(mid_dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.linear1(tokens))
        hidden = self.conv(hidden.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        hidden = F.relu(self.linear2(F.relu(hidden)))
        return tokens + hidden


class LayerNorm3d(nn.Module):
    """LayerNorm over the channels of a channels-first (B, C, X, Y, Z) volume (SAM's LayerNorm2d in 3D)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        mean = volume.mean(1, keepdim=True)
        var = (volume - mean).pow(2).mean(1, keepdim=True)
        normed = (volume - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * normed + self.bias[:, None, None, None]
