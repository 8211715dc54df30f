"""3D window attention of the SAM-3D image encoder: cubic windows, shifted windows, decomposed 3D rel-pos.

Token grids are channels-last tensors (B, A, B', C', C) whose three spatial axes follow the encoder's
token order (crop axes 1, 2, 0; see ``image_encoder``). Windows are cubes of ``window`` tokens; every
other block shifts them by half a window (Swin style) and masks attention between tokens that the
cyclic shift brought together from opposite borders.

Relative position: SAM's per-axis tables ``rel_pos_h`` / ``rel_pos_w`` (learned on 2D windows of 14
or on the 64-wide global grid) are resampled linearly to ``2 * window - 1`` rows at run time, and a
third table ``rel_pos_d`` covers the new axis. Their sum, scaled by the scalar ``lr``, is added to the
attention logits of every query (MViTv2's decomposition).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

SHIFT_MASK_VALUE = -100.0  # large enough to zero the softmax weight, small enough to stay finite in fp16


def window_partition(tokens: torch.Tensor, window: int) -> torch.Tensor:
    """Split a (B, X, Y, Z, C) grid into (B * nX * nY * nZ, window, window, window, C) cubes.

    Windows are ordered by (batch, x window, y window, z window); each axis must be a multiple of
    ``window`` (the encoder's grid always is).
    """
    b, x, y, z, c = tokens.shape
    if x % window or y % window or z % window:
        raise ValueError(f"token grid {(x, y, z)} is not a multiple of the window size {window}")
    cubes = tokens.view(b, x // window, window, y // window, window, z // window, window, c)
    return cubes.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window, window, window, c)


def window_unpartition(windows: torch.Tensor, window: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of ``window_partition``: (B * nWindows, w, w, w, C) cubes back to a (B, X, Y, Z, C) grid."""
    x, y, z = grid
    n_windows = (x // window) * (y // window) * (z // window)
    b = windows.shape[0] // n_windows
    cubes = windows.view(b, x // window, y // window, z // window, window, window, window, -1)
    return cubes.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, x, y, z, -1)


def shifted_window_mask(grid: int, window: int, shift: int) -> torch.Tensor:
    """Additive attention mask (nWindows, window^3, window^3) for a cubic grid rolled by ``-shift``.

    After the roll, each window may hold tokens from up to three regions per axis (interior, the last
    full window, the wrapped-around border); tokens of different regions must not attend to each other.
    Entries are 0 (same region) or ``SHIFT_MASK_VALUE``. Built for real even inside a meta-device
    context: the mask is derived, never loaded, so a network built on the meta device and given its
    weights with ``load_state_dict(assign=True)`` is complete. The tensor is cached and shared by every
    block and network asking for the same mask, so it must not be modified in place.
    """
    device = torch.get_default_device()
    device = torch.device("cpu") if device.type == "meta" else device
    return _shift_mask(grid, window, shift, device)


@lru_cache(maxsize=8)
def _shift_mask(grid: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    # One region id per axis position (0 interior, 1 last full window, 2 wrapped border), combined.
    position = torch.zeros(grid, dtype=torch.long, device=device)
    position[grid - window : grid - shift] = 1
    position[grid - shift :] = 2
    region = (position[:, None, None] * 9 + position[None, :, None] * 3 + position[None, None, :]).float()
    ids = window_partition(region[None, ..., None], window).reshape(-1, window**3)
    different = ids.unsqueeze(1) != ids.unsqueeze(2)
    return torch.zeros(different.shape, device=device).masked_fill(different, SHIFT_MASK_VALUE)


def resized_rel_pos(table: torch.Tensor, size: int) -> torch.Tensor:
    """A (L, head_dim) relative-position table resampled (linear, half-pixel) to (2 * size - 1, head_dim)."""
    length = 2 * size - 1
    if table.shape[0] == length:
        return table
    resampled = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear")
    return resampled[0].t()


def rel_pos_lookup(table: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size, head_dim) embeddings of the offset query - key for every query/key pair on one axis."""
    table = resized_rel_pos(table, size)
    coords = torch.arange(size, device=table.device)
    return table[coords[:, None] - coords[None, :] + (size - 1)]


def decomposed_rel_pos_bias(
    q: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor], window: int, scale: torch.Tensor
) -> torch.Tensor:
    """Additive logits bias (B, heads, N, N) from per-axis relative positions, N = window^3.

    Args:
        q: unscaled queries (B, heads, N, head_dim), tokens ordered (x, y, z) within the window.
        tables: ``rel_pos_h``, ``rel_pos_w``, ``rel_pos_d`` for the window's x, y and z axes.
        scale: scalar multiplier of the whole bias (the checkpoint's ``lr``).
    """
    b, heads, n, dim = q.shape
    grid_q = q.reshape(b, heads, window, window, window, dim)
    rx, ry, rz = (rel_pos_lookup(table, window) for table in tables)
    bias_x = torch.einsum("bnxyzc,xkc->bnxyzk", grid_q, rx)
    bias_y = torch.einsum("bnxyzc,ykc->bnxyzk", grid_q, ry)
    bias_z = torch.einsum("bnxyzc,zkc->bnxyzk", grid_q, rz)
    bias = (bias_x[..., :, None, None] + bias_y[..., None, :, None] + bias_z[..., None, None, :]).reshape(
        b, heads, n, n
    )
    return scale * bias


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside cubic windows with decomposed 3D relative positions.

    ``rel_pos_h`` / ``rel_pos_w`` keep SAM's 2D table length (``2 * rel_pos_size - 1``); ``rel_pos_d``
    has the same length. ``lr`` scales the rel-pos bias (1 in released weights).
    """

    def __init__(self, dim: int, num_heads: int, rel_pos_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.lr = nn.Parameter(torch.tensor(1.0))

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within each window.

        Args:
            windows: (nW * B, w, w, w, C) cubes from ``window_partition``.
            mask: (nW, w^3, w^3) additive shift mask or None; window i of every batch item uses mask[i].
        Returns:
            (nW * B, w, w, w, C).
        """
        count, window = windows.shape[0], windows.shape[1]
        n = window**3
        qkv = self.qkv(windows).reshape(count, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = decomposed_rel_pos_bias(q, (self.rel_pos_h, self.rel_pos_w, self.rel_pos_d), window, self.lr)
        if mask is not None:
            n_mask = mask.shape[0]
            bias = (bias.view(count // n_mask, n_mask, self.num_heads, n, n) + mask[None, :, None]).view(
                count, self.num_heads, n, n
            )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.transpose(1, 2).reshape(count, window, window, window, -1)
        return self.proj(out)
