"""SAM-Med3D's image encoder: a 3D ViT (ViTDet style) over a cubic crop, with a convolutional neck.

The crop (B, in_chans, S, S, S) is cut into cubic patches (``patch_size``), giving a T^3 token grid,
T = S / patch_size. Blocks alternate windowed and global self-attention; every attention adds
decomposed relative positions (one table per axis, MViTv2). Windowed blocks pad the grid with zero
tokens up to a multiple of ``window_size`` after their first layer norm and attend over whole windows,
padding included; the released model has T = 8 and windows of 14, so its windowed blocks attend over
one 14^3 window of which 512 tokens are real. The padding is what the weights were trained with and is
kept. The neck maps the tokens to ``out_chans`` channels: (B, out_chans, T, T, T).

The relative-position bias is SAM's 2D code carried to 3D with its broadcasting unchanged: the logit of
query (d, h, w) and key (d', h', w') receives ``q(d,h,w)·Rd[d, w']``, ``q(d,h,d')·Rh[h, w']`` and
``q(d,h,h')·Rw[h', w']`` (R[i, j] the table row for offset i - j), not the MViTv2 sum over
``Rd[d, d'] + Rh[h, h'] + Rw[w, w']``. The released weights were trained with it, so it is kept.

Weight names are the authors' (``patch_embed.proj``, ``pos_embed``, ``blocks.N.{norm1, attn.{qkv, proj,
rel_pos_d, rel_pos_h, rel_pos_w}, norm2, mlp.{lin1, lin2}}``, ``neck.{0, 1, 2, 3}``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm3d(nn.Module):
    """Layer norm over the channels of a (B, C, X, Y, Z) map (eps 1e-6, as the authors')."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class MLPBlock(nn.Module):
    """``lin2(act(lin1(x)))``."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def rel_pos_lookup(table: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size, head_dim): the embedding of offset query - key for every pair along one axis."""
    if table.shape[0] != 2 * size - 1:
        raise ValueError(f"relative position table has {table.shape[0]} rows, a grid of {size} needs {2 * size - 1}")
    coords = torch.arange(size, device=table.device)
    return table[coords[:, None] - coords[None, :] + (size - 1)]


class Attention(nn.Module):
    """Multi-head self-attention over a (B, D, H, W, C) token cube with decomposed relative positions.

    ``input_size`` is the cube this layer attends over (a window, or the whole grid for global blocks);
    each of ``rel_pos_d/h/w`` has ``2 * size - 1`` rows.
    """

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int, int], qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[2] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, _ = x.shape
        n = d * h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        grid_q = q.reshape(b, self.num_heads, d, h, w, -1)
        rel_d = torch.einsum("bndhwc,dkc->bndhwk", grid_q, rel_pos_lookup(self.rel_pos_d, d))
        rel_h = torch.einsum("bndhwc,hkc->bndhwk", grid_q, rel_pos_lookup(self.rel_pos_h, h))
        rel_w = torch.einsum("bndhwc,wkc->bndhwk", grid_q, rel_pos_lookup(self.rel_pos_w, w))
        # The authors' broadcasting, kept as trained (see the module docstring): the offsets line up with
        # the key axes (d, h, w) only through a cubic grid's equal sizes.
        bias = (rel_d[:, :, :, :, :, None, None] + rel_h[:, :, :, :, None, :, None]
                + rel_w[:, :, :, :, None, None, :]).reshape(b, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, d, h, w, -1))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(B, D, H, W, C) -> (B * nWindows, window, window, window, C) after zero padding to multiples of
    ``window``; also returns the padded grid."""
    b, d, h, w, c = x.shape
    pads = [(window - n % window) % window for n in (d, h, w)]
    if any(pads):
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    dp, hp, wp = d + pads[0], h + pads[1], w + pads[2]
    x = x.view(b, dp // window, window, hp // window, window, wp // window, window, c)
    windows = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window, window, window, c)
    return windows, (dp, hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int, int],
                       grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of ``window_partition``: back to (B, D, H, W, C), padding removed."""
    dp, hp, wp = padded
    b = windows.shape[0] // ((dp // window) * (hp // window) * (wp // window))
    x = windows.view(b, dp // window, hp // window, wp // window, window, window, window, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, dp, hp, wp, -1)
    d, h, w = grid
    return x[:, :d, :h, :w, :]


class Block3D(nn.Module):
    """Pre-norm transformer block; ``window_size`` 0 attends globally over ``grid``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int,
                 grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attended = grid if window_size == 0 else (window_size,) * 3
        self.attn = Attention(dim, num_heads, attended)  # type: ignore[arg-type]
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            grid = (x.shape[1], x.shape[2], x.shape[3])
            windows, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(windows), self.window_size, padded, grid)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed3D(nn.Module):
    """Non-overlapping cubic patches -> channels-last tokens (B, T, T, T, embed_dim)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class ImageEncoderViT3D(nn.Module):
    """(B, in_chans, S, S, S) crop -> (B, out_chans, T, T, T) image embedding, T = S / patch_size."""

    def __init__(self, img_size: int = 128, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 384,
                 window_size: int = 14, global_attn_indexes: Sequence[int] = (2, 5, 8, 11)) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        tokens = img_size // patch_size
        grid = (tokens, tokens, tokens)
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, tokens, tokens, embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(embed_dim, num_heads, mlp_ratio, 0 if i in global_attn_indexes else window_size, grid)
            for i in range(depth))
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
