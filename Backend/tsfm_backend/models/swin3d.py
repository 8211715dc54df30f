"""3D shifted-window transformer layers with MIS-FM's weight names (``blocks.{i}.attn.qkv`` ...).

Tokens are (B, S*H*W, C) for a (S, H, W) grid. Grids that are not multiples of the window are padded
with zeros after ``norm1`` (padded tokens take part in attention, as in the released model). The
relative position index keeps MIS-FM's multipliers (``3w-1`` and ``2w-1``); it is a persistent
buffer, so the value stored in a checkpoint is the one used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, S, H, W, C) -> (B * windows, window**3, C), windows in (S, H, W) raster order."""
    b, s, h, w, c = x.shape
    x = x.view(b, s // window, window, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window**3, c)


def window_reverse(windows: torch.Tensor, window: int, s: int, h: int, w: int) -> torch.Tensor:
    """Inverse of window_partition: (B * windows, window**3, C) -> (B, S, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((s // window) * (h // window) * (w // window))
    x = windows.view(b, s // window, h // window, w // window, window, window, window, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, s, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """(window**3, window**3) indices into the bias table, with MIS-FM's axis multipliers."""
    axes = torch.arange(window)
    coords = torch.stack(torch.meshgrid(axes, axes, axes, indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    relative[:, :, 0] *= 3 * window - 1
    relative[:, :, 1] *= 2 * window - 1
    return relative.sum(-1)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples with probability ``rate`` (training only), rescale the rest."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (window**3)-token windows with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 3, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * windows, N, C); mask: (windows, N, N) additive, or None."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0).to(bias.dtype)).expand(
                b // windows, windows, self.num_heads, n, n
            ).reshape(b, self.num_heads, n, n)
        dropout = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class SwinBlock(nn.Module):
    """One (shifted-)window transformer block for a fixed (S, H, W) token grid."""

    def __init__(
        self,
        dim: int,
        resolution: Sequence[int],
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.resolution = tuple(resolution)
        if min(self.resolution) <= window:  # the grid fits in one window: no partition, no shift
            window, shift = min(self.resolution), 0
        self.window, self.shift = window, shift
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, length, c = x.shape
        s, h, w = self.resolution
        if length != s * h * w:
            raise ValueError(f"Swin block built for a {s}x{h}x{w} token grid got {length} tokens")
        y = self.norm1(x).view(b, s, h, w, c)
        pads = [(self.window - n % self.window) % self.window for n in (s, h, w)]
        y = F.pad(y, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = y.shape[1:4]
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift,) * 3, dims=(1, 2, 3))
        y = self.attn(window_partition(y, self.window), mask if self.shift else None)
        y = window_reverse(y, self.window, *padded)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift,) * 3, dims=(1, 2, 3))
        y = y[:, :s, :h, :w].reshape(b, s * h * w, c)
        x = x + drop_path(y, self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


def shift_mask(grid: Sequence[int], window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(windows, window**3, window**3) additive mask (0 or -100) that keeps shifted windows apart."""
    padded = [-(-n // window) * window for n in grid]
    regions = torch.zeros((1, *padded, 1), device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for zs in bounds:
        for ys in bounds:
            for xs in bounds:
                regions[:, zs, ys, xs, :] = label
                label += 1
    windows = window_partition(regions, window).squeeze(-1)
    difference = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.where(difference != 0, -100.0, 0.0)


class SwinLayer(nn.Module):
    """``depth`` blocks alternating plain and shifted windows, on (B, S*H*W, C) tokens."""

    def __init__(
        self,
        dim: int,
        resolution: Sequence[int],
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.resolution = tuple(resolution)
        self.window, self.shift = window, window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, drop,
                      attn_drop, drop_path_rate)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        needs_mask = any(block.shift for block in self.blocks)
        mask = shift_mask(self.resolution, self.window, self.shift, x.device) if needs_mask else None
        for block in self.blocks:
            x = block(x, mask)
        return x
