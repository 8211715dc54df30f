"""SAM-Med3D's prompt encoder: clicks -> sparse tokens, the previous mask -> a dense embedding.

Clicks are (x, y, z) voxel coordinates of the crop in the crop tensor's axis order, each with a label
(1 object, 0 background, -1 padding). A click at voxel v is encoded at (v + 0.5) / S with random Fourier
features (``pe_layer``, a fixed Gaussian matrix stored with the weights) plus the label's learned
embedding. As in SAM, one padding token ("not a point") is appended to the clicks when no box is given.
The previous low-resolution mask logits (B, 1, 4T, 4T, 4T) are downscaled by two strided convolutions to
the embedding grid; without one, the learned ``no_mask_embed`` fills the grid.

Weight names are the authors' (``pe_layer.positional_encoding_gaussian_matrix``,
``point_embeddings.{0,1}``, ``not_a_point_embed``, ``mask_downscaling.{0,1,3,4,6}``, ``no_mask_embed``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .image_encoder import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of coordinates in [0, 1]^3: (sin, cos, sin) of 2 pi (2c - 1) @ G.

    The third block repeats the sine (the authors' 3D extension of SAM's (sin, cos)), so the width is
    ``3 * num_pos_feats``.
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((3, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords), torch.sin(coords)], dim=-1)

    def forward(self, size: tuple[int, int, int]) -> torch.Tensor:
        """(C, X, Y, Z) encoding of the voxel centres of a grid of ``size``.

        The authors stack the axes as (axis 1, axis 0, axis 2) here, unlike for clicks; kept, since the
        decoder was trained with it.
        """
        x, y, z = size
        grid = torch.ones((x, y, z), device=self.positional_encoding_gaussian_matrix.device, dtype=torch.float32)
        along_0 = (grid.cumsum(dim=0) - 0.5) / y
        along_1 = (grid.cumsum(dim=1) - 0.5) / x
        along_2 = (grid.cumsum(dim=2) - 0.5) / z
        return self._pe_encoding(torch.stack([along_1, along_0, along_2], dim=-1)).permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int, int]) -> torch.Tensor:
        """(B, N, C) encoding of (B, N, 3) coordinates given in voxels of a grid of ``image_size``."""
        scale = torch.tensor(image_size, dtype=coords.dtype, device=coords.device)
        return self._pe_encoding((coords / scale).to(torch.float))


class PromptEncoder3D(nn.Module):
    """Embeds clicks and a mask prompt for the mask decoder.

    Args:
        embed_dim: token width (the image embedding's channels); a multiple of 3.
        image_embedding_size: the image embedding grid (T, T, T).
        input_image_size: the crop (S, S, S) clicks are given in.
        mask_in_chans: hidden width of the mask downscaling.
    """

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int, int],
                 input_image_size: tuple[int, int, int], mask_in_chans: int) -> None:
        super().__init__()
        if embed_dim % 3:
            raise ValueError(f"prompt width {embed_dim} must be a multiple of 3 (three Fourier blocks)")
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, embed_dim, T, T, T) positional encoding of the image embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, N + 1, embed_dim) tokens for (B, N, 3) crop voxels and (B, N) labels, padding token last."""
        points = points.to(torch.float32) + 0.5
        padding_point = torch.zeros((points.shape[0], 1, 3), device=points.device)
        padding_label = -torch.ones((labels.shape[0], 1), device=labels.device)
        points = torch.cat([points, padding_point], dim=1)
        labels = torch.cat([labels.to(padding_label.dtype), padding_label], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        embedding[labels == -1] = 0.0
        embedding[labels == -1] += self.not_a_point_embed.weight
        embedding[labels == 0] += self.point_embeddings[0].weight
        embedding[labels == 1] += self.point_embeddings[1].weight
        return embedding

    def forward(self, points: torch.Tensor, labels: torch.Tensor,
                mask_logits: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sparse (B, N + 1, embed_dim), dense (B, embed_dim, T, T, T)) for clicks and an optional
        (B, 1, 4T, 4T, 4T) previous mask (logits)."""
        sparse = self.embed_points(points, labels)
        if mask_logits is not None:
            return sparse, self.mask_downscaling(mask_logits)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(
            points.shape[0], -1, *self.image_embedding_size)
        return sparse, dense
