"""The SAM-3D prompt encoder: clicks read the image features and rewrite them through learned queries.

A click becomes a token by sampling the last image feature map at its position (trilinear). Each of
the ``depth`` blocks lets ten learned global queries attend to themselves and to the click tokens,
refines the queries with an MLP, and then lets every image token cross-attend to the queries. The
output is the updated feature map, same shape as the input. Clicks carry no positive/negative label.

Two things exist only so released checkpoints load with strict key matching: the random Fourier
``positional_encoding_gaussian_matrix`` buffer and each block's ``cross_attn_token_to_image``; the
published forward pass reads neither, and neither does this one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_GLOBAL_QUERIES = 10


class TokenAttention(nn.Module):
    """Multi-head attention with projections narrowed to ``dim // downsample_rate`` (as in SAM's decoder)."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f"attention width {inner} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, Nq, dim), (B, Nk, dim), (B, Nk, dim) -> (B, Nq, dim)."""
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class QueryMLP(nn.Module):
    """``lin2(relu(lin1(x)))`` applied to the global queries."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class PromptAttentionBlock(nn.Module):
    """Queries + click tokens self-attend; queries pass an MLP; image tokens cross-attend to the queries."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2) -> None:
        super().__init__()
        self.self_attn = TokenAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = QueryMLP(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, num_heads, downsample_rate)
        self.global_query = nn.Parameter(0.1 * torch.randn(1, NUM_GLOBAL_QUERIES, dim))

    def forward(self, image: torch.Tensor, clicks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, N_image, dim), clicks (B, N_clicks, dim) -> updated (image, clicks)."""
        tokens = torch.cat([self.global_query.expand(clicks.shape[0], -1, -1), clicks], dim=1)
        tokens = self.norm2(tokens + self.norm1(self.self_attn(tokens, tokens, tokens)))
        queries, clicks = tokens[:, :NUM_GLOBAL_QUERIES], tokens[:, NUM_GLOBAL_QUERIES:]
        queries = self.norm3(queries + self.mlp(queries))
        image = self.norm4(image + self.cross_attn_image_to_token(image, queries, queries))
        return image, clicks


class PromptTransformer(nn.Module):
    """A stack of ``PromptAttentionBlock`` (key prefix ``layers.i``)."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PromptAttentionBlock(dim, num_heads, mlp_dim) for _ in range(depth))

    def forward(self, image: torch.Tensor, clicks: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            image, clicks = layer(image, clicks)
        return image


def normalised_click_grid(points: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Clicks in crop voxels -> ``grid_sample`` coordinates for a feature map ordered (A1, A2, A0).

    Args:
        points: (B, N, 3) voxel indices (a0, a1, a2) in the crop, a0 along the slice axis.
    Returns:
        (B, 1, 1, N, 3) in [-1, 1], last axis (x, y, z) = (a0, a2, a1): grid_sample's x runs along the
        feature map's last axis (A0), y along the middle one (A2), z along the first (A1). Voxel
        centres map half-pixel style, ``(p + 0.5) * 2 / S - 1``.
    """
    a0, a1, a2 = points.float().unbind(-1)
    grid = torch.stack([a0, a2, a1], dim=-1)
    grid = (grid + 0.5) * 2.0 / crop_size - 1.0
    return grid[:, None, None]


class PromptEncoder3D(nn.Module):
    """Click-conditioned rewrite of a (B, dim, T, T, T) feature map (3DSAM-adapter ``PromptEncoder``)."""

    def __init__(self, dim: int = 256, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.transformer = PromptTransformer(depth, dim, num_heads, mlp_dim)
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, dim // 2))

    def forward(self, features: torch.Tensor, points: torch.Tensor, crop_size: int) -> torch.Tensor:
        """Features updated by the clicks.

        Args:
            features: (B, dim, T, T, T) image features, axes (A1, A2, A0).
            points: (B, N, 3) click voxels (a0, a1, a2) in the crop, N >= 1.
            crop_size: S, crop voxels per side (clicks are normalised by it).
        Returns:
            (B, dim, T, T, T).
        """
        if points.ndim != 3 or points.shape[-1] != 3 or points.shape[1] < 1:
            raise ValueError(f"points must be (B, N>=1, 3) crop voxels, got {tuple(points.shape)}")
        grid = normalised_click_grid(points, crop_size).to(features.dtype)
        clicks = F.grid_sample(features, grid, align_corners=False).flatten(2).transpose(1, 2)
        image = features.flatten(2).transpose(1, 2)
        image = self.transformer(image, clicks)
        return image.transpose(1, 2).reshape(features.shape)
