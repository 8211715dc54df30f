"""The SAM-3D image encoder: SAM's ViT turned 3D with slice merging, adapters and 3D window attention.

Pipeline for one cubic crop of S voxels per side, axes (A0, A1, A2) with A0 the slice axis:

1. upsample the crop ``upsample`` times (trilinear, half-pixel) so that each of its S * upsample slices
   is a 2D image of the size SAM's patch embedding expects;
2. SAM's frozen ``patch_embed`` turns each slice into a (T, T) token plane, T = S * upsample / patch;
3. ``slice_embed`` (depthwise conv, kernel ``num_slice`` along A0) merges every ``num_slice`` planes
   into one, giving a cubic T^3 token grid stored channels-last in the order (A1, A2, A0);
4. SAM's 2D ``pos_embed`` average-pooled to T x T plus a learned ``depth_embed`` along A0;
5. ``depth`` blocks of [adapter, 3D window attention (shifted on even blocks), MLP];
6. ``neck_3d`` maps taken after each quarter of the blocks: four (B, out_chans, T, T, T) features.

Steps 1 to 3 run in chunks of slices, so memory grows with the chunk, not with S * upsample slices:
trilinear upsampling is separable, so a chunk of output slices needs only the two source slices
around each of them, and ``slice_embed`` reduces every ``num_slice`` consecutive slices on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import Adapter3D, LayerNorm3d
from .attention import WindowAttention3D, shifted_window_mask, window_partition, window_unpartition


class PatchEmbed(nn.Module):
    """SAM's patch embedding: (N, C, H, W) images -> (N, H/p, W/p, dim) channels-last tokens."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).permute(0, 2, 3, 1)


class MLPBlock(nn.Module):
    """SAM's transformer MLP: ``lin2(act(lin1(x)))``."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = act()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(tokens)))


class Block3D(nn.Module):
    """Adapter, then pre-norm 3D window attention and MLP, on a channels-last (B, T, T, T, C) grid.

    Shifted blocks roll the grid by ``-shift`` before partitioning and use the registered ``attn_mask``
    (nWindows, w^3, w^3); the mask is derived from the grid size, so it is not stored with the weights.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window: int,
        shift: int,
        grid: int,
        rel_pos_size: int,
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention3D(dim, num_heads, rel_pos_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.adapter = Adapter3D(dim, dim // 2)
        mask = shifted_window_mask(grid, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor, window_chunk: int | None = None) -> torch.Tensor:
        """(B, T, T, T, C) -> same; ``window_chunk`` windows are attended at a time to bound memory."""
        tokens = self.adapter(tokens)
        shortcut = tokens
        x = self.norm1(tokens)
        shifts = (self.shift, self.shift, self.shift)
        if self.shift:
            x = torch.roll(x, shifts=tuple(-s for s in shifts), dims=(1, 2, 3))
        windows = window_partition(x, self.window)
        chunk = window_chunk or windows.shape[0]
        outputs = []
        for start in range(0, windows.shape[0], chunk):
            index = torch.arange(start, min(start + chunk, windows.shape[0]), device=windows.device)
            mask = None if self.attn_mask is None else self.attn_mask[index % self.attn_mask.shape[0]]
            outputs.append(self.attn(windows[start : start + chunk], mask))
        x = window_unpartition(torch.cat(outputs), self.window, tuple(x.shape[1:4]))
        if self.shift:
            x = torch.roll(x, shifts=shifts, dims=(1, 2, 3))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def upsampled_slices(crop: torch.Tensor, start: int, stop: int, factor: int) -> torch.Tensor:
    """Slices ``start:stop`` along A0 of ``crop`` upsampled ``factor`` times on every axis.

    Equals ``F.interpolate(crop[None], scale_factor=factor, mode="trilinear")[0, :, start:stop]``
    transposed to slices-first, without building the whole upsampled volume.

    Args:
        crop: (C, S0, S1, S2) float.
    Returns:
        (stop - start, C, S1 * factor, S2 * factor).
    """
    size = crop.shape[1]
    out = torch.arange(start, stop, device=crop.device, dtype=torch.float64)
    source = ((out + 0.5) / factor - 0.5).clamp(min=0)
    lower = source.floor().long()
    upper = (lower + 1).clamp(max=size - 1)
    weight = (source - lower).to(crop.dtype)[None, :, None, None]
    slab = crop[:, lower] * (1 - weight) + crop[:, upper] * weight
    return F.interpolate(slab.transpose(0, 1), scale_factor=factor, mode="bilinear")


class ImageEncoder3D(nn.Module):
    """SAM ViT image encoder with 3D adapters (3DSAM-adapter ``ImageEncoderViT_3d_v2`` layout).

    Args:
        crop_size: S, voxels per side of the cubic input crop.
        upsample: factor applied to the crop before patch embedding (S * upsample = SAM slice size used).
        patch_size: SAM patch size; ``num_slice``: slices merged by ``slice_embed`` (equal, for a cubic grid).
        pretrain_img_size: SAM's image size; sets ``pos_embed`` to (1, size/patch, size/patch, dim).
        window_size: SAM's 2D window; sets the rel-pos table length of windowed blocks
            (global blocks, ``global_attn_indexes``, keep SAM's full-grid length).
        cubic_window_size: 3D attention window in tokens; even blocks shift by half of it.
    """

    def __init__(
        self,
        crop_size: int = 128,
        upsample: int = 4,
        patch_size: int = 16,
        num_slice: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        pretrain_img_size: int = 1024,
        window_size: int = 14,
        cubic_window_size: int = 8,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        side = crop_size * upsample
        if side % patch_size or side % num_slice or side // patch_size != side // num_slice:
            raise ValueError(
                f"crop {crop_size} x upsample {upsample} must give the same token count per axis with "
                f"patch {patch_size} and num_slice {num_slice}"
            )
        grid = side // patch_size
        pretrain_grid = pretrain_img_size // patch_size
        if pretrain_grid % grid:
            raise ValueError(f"position grid {pretrain_grid} cannot be pooled to the token grid {grid}")
        if depth % 4:
            raise ValueError(f"depth {depth} must be a multiple of 4 (features are taken every quarter)")
        self.crop_size = crop_size
        self.upsample = upsample
        self.num_slice = num_slice
        self.grid = grid
        self.pos_pool = pretrain_grid // grid

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.slice_embed = nn.Conv3d(
            embed_dim, embed_dim, kernel_size=(1, 1, num_slice), stride=(1, 1, num_slice), groups=embed_dim
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, pretrain_grid, pretrain_grid, embed_dim))
        self.depth_embed = nn.Parameter(torch.ones(1, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(
                embed_dim,
                num_heads,
                mlp_ratio,
                window=cubic_window_size,
                shift=cubic_window_size // 2 if i % 2 == 0 else 0,
                grid=grid,
                rel_pos_size=pretrain_grid if i in global_attn_indexes else window_size,
            )
            for i in range(depth)
        )
        self.neck_3d = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(embed_dim, out_chans, 1, bias=False),
                LayerNorm3d(out_chans),
                nn.Conv3d(out_chans, out_chans, 3, padding=1, bias=False),
                LayerNorm3d(out_chans),
            )
            for _ in range(4)
        )

    def embed(self, crop: torch.Tensor, slice_chunk: int | None = None) -> torch.Tensor:
        """Tokens (B, T, T, T, dim) in order (A1, A2, A0) with positions added.

        Args:
            crop: (B, in_chans, S, S, S) normalised image, axes (A0, A1, A2).
            slice_chunk: upsampled slices patch-embedded at once (a multiple of ``num_slice``);
                None embeds all S * upsample slices together.
        """
        if crop.ndim != 5 or tuple(crop.shape[2:]) != (self.crop_size,) * 3:
            raise ValueError(
                f"expected a (B, C, {self.crop_size}, {self.crop_size}, {self.crop_size}) crop, "
                f"got {tuple(crop.shape)}"
            )
        slices = self.crop_size * self.upsample
        chunk = slices if slice_chunk is None else slice_chunk
        if chunk < 1 or chunk % self.num_slice:
            raise ValueError(f"slice_chunk {slice_chunk} must be a positive multiple of {self.num_slice}")
        items = []
        for item in crop:
            planes = []
            for start in range(0, slices, chunk):
                images = upsampled_slices(item, start, min(start + chunk, slices), self.upsample)
                with torch.no_grad():  # SAM's patch embedding stays frozen; no activations kept for it
                    patches = self.patch_embed(images)
                planes.append(self.slice_embed(patches.permute(3, 1, 2, 0).unsqueeze(0)))
            items.append(torch.cat(planes, dim=-1))
        tokens = torch.cat(items).permute(0, 2, 3, 4, 1)
        pos = F.avg_pool2d(self.pos_embed.permute(0, 3, 1, 2), self.pos_pool).permute(0, 2, 3, 1)
        return tokens + pos.unsqueeze(3) + self.depth_embed[:, None, None]

    def forward(
        self, crop: torch.Tensor, slice_chunk: int | None = None, window_chunk: int | None = None
    ) -> list[torch.Tensor]:
        """Four feature maps (B, out_chans, T, T, T), axes (A1, A2, A0): after each quarter of the blocks.

        Args:
            crop: (B, in_chans, S, S, S) normalised image, axes (A0, A1, A2).
            slice_chunk: see ``embed``; window_chunk: attention windows processed at a time.
        """
        tokens = self.embed(crop, slice_chunk)
        quarter = len(self.blocks) // 4
        features = []
        for index, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, window_chunk)
            if index % quarter == 0:
                features.append(self.neck_3d[index // quarter - 1](tokens.permute(0, 4, 1, 2, 3)))
        return features
