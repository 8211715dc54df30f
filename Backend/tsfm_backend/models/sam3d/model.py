"""The promptable SAM-3D network: image encoder, prompt encoder and mask decoder around one cubic crop.

The crop is (B, 3, S, S, S) with axes (A0, A1, A2), A0 the slice axis, already resampled to the
model's spacing and normalised. Clicks are voxel indices (a0, a1, a2) inside the crop. Logits come
back on the crop grid, axes (A0, A1, A2), channel 1 = the clicked object.

``encode`` does everything that depends on the image only (the expensive part) and returns a
``CropEmbedding``; ``decode`` adds the clicks. An interactive caller keeps the embedding of a crop and
calls only ``decode`` for further clicks in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoder3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D

PROMPTED_LEVEL = 3  # the released model conditions only the last encoder feature on the clicks


@dataclass
class CropEmbedding:
    """Everything about one crop that the clicks do not change.

    Attributes:
        prompted_feature: (B, C, T, T, T) the encoder feature the clicks rewrite, axes (A1, A2, A0).
        static_partial: (B, channels, S/2, S/2, S/2) the decoder's first classifier convolution over the
            unprompted levels and the downsampled crop (``MaskDecoder3D.static_partial``), axes (A1, A2, A0).
    """

    prompted_feature: torch.Tensor
    static_partial: torch.Tensor


class Sam3D(nn.Module):
    """3DSAM-adapter: ``image_encoder`` (ViT + 3D adapters), ``prompt_encoder``, ``mask_decoder``.

    Architecture keywords are those of ``ImageEncoder3D`` plus the prompt transformer (``prompt_depth``,
    ``prompt_heads``, ``prompt_mlp_dim``) and the decoder (``decoder_channels``, ``num_classes``).
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
        prompt_depth: int = 2,
        prompt_heads: int = 8,
        prompt_mlp_dim: int = 2048,
        decoder_channels: int = 128,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        if crop_size % 2:
            raise ValueError(f"crop_size {crop_size} must be even (the decoder works at half resolution)")
        self.crop_size = crop_size
        self.image_encoder = ImageEncoder3D(
            crop_size=crop_size,
            upsample=upsample,
            patch_size=patch_size,
            num_slice=num_slice,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            out_chans=out_chans,
            pretrain_img_size=pretrain_img_size,
            window_size=window_size,
            cubic_window_size=cubic_window_size,
            global_attn_indexes=tuple(global_attn_indexes),
        )
        self.prompt_encoder = PromptEncoder3D(out_chans, prompt_depth, prompt_heads, prompt_mlp_dim)
        self.mask_decoder = MaskDecoder3D(out_chans, decoder_channels, num_classes)

    def encode(
        self, crop: torch.Tensor, slice_chunk: int | None = None, window_chunk: int | None = None
    ) -> CropEmbedding:
        """The click-independent part for a (B, in_chans, S, S, S) crop, axes (A0, A1, A2).

        ``slice_chunk`` / ``window_chunk`` bound memory (see ``ImageEncoder3D``); results do not depend
        on them.
        """
        features = self.image_encoder(crop, slice_chunk=slice_chunk, window_chunk=window_chunk)
        image = crop[:, :1].permute(0, 1, 3, 4, 2)
        image_small = F.interpolate(image, size=(self.crop_size // 2,) * 3, mode="trilinear")
        partial = self.mask_decoder.static_partial(features, PROMPTED_LEVEL, image_small)
        return CropEmbedding(features[PROMPTED_LEVEL], partial)

    def decode(self, embedding: CropEmbedding, points: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, S, S, S), axes (A0, A1, A2), for (B, N, 3) crop clicks (a0, a1, a2)."""
        prompted = self.prompt_encoder(embedding.prompted_feature, points, self.crop_size)
        logits = self.mask_decoder.classify_prompted(
            embedding.static_partial, prompted, PROMPTED_LEVEL, self.crop_size
        )
        return logits.permute(0, 1, 4, 2, 3)

    def forward(self, crop: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, S, S, S), axes (A0, A1, A2): ``decode(encode(crop), points)``."""
        return self.decode(self.encode(crop), points)
