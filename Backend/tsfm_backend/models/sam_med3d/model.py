"""The promptable SAM-Med3D network: image encoder, prompt encoder and mask decoder around one cubic crop.

The crop is (B, in_chans, S, S, S), already resampled, reoriented and normalised as the authors do
(``tsfm_backend.inference.sam_med3d``); clicks are voxel coordinates of the crop in its axis order.
``encode`` does everything that depends on the image only (the expensive part); ``decode`` adds the
clicks and the previous low-resolution mask and returns the new low-resolution mask logits
(B, 1, 4T, 4T, 4T), T = S / patch_size (32^3 for the released 128^3 crops), which the next click
feeds back in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D


class SamMed3D(nn.Module):
    """SAM-Med3D (and -turbo): ``image_encoder``, ``prompt_encoder``, ``mask_decoder``.

    Architecture keywords are those of ``PRESETS`` (``img_size`` .. ``global_attn_indexes`` for the
    encoder; ``out_chans`` is also the prompt width; ``mask_in_chans`` for the prompt encoder; the rest for
    the decoder).
    """

    def __init__(self, img_size: int = 128, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 384,
                 window_size: int = 14, global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
                 mask_in_chans: int = 16, num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256, transformer_depth: int = 2, transformer_heads: int = 8,
                 transformer_mlp_dim: int = 2048) -> None:
        super().__init__()
        self.crop_size = img_size
        tokens = img_size // patch_size
        self.low_res_size = 4 * tokens
        self.image_encoder = ImageEncoderViT3D(img_size, patch_size, in_chans, embed_dim, depth, num_heads,
                                               mlp_ratio, out_chans, window_size, tuple(global_attn_indexes))
        self.prompt_encoder = PromptEncoder3D(out_chans, (tokens,) * 3, (img_size,) * 3, mask_in_chans)  # type: ignore[arg-type]
        self.mask_decoder = MaskDecoder3D(out_chans, num_multimask_outputs, iou_head_depth, iou_head_hidden_dim,
                                          transformer_depth, transformer_heads, transformer_mlp_dim)

    def encode(self, crop: torch.Tensor) -> torch.Tensor:
        """(B, out_chans, T, T, T) image embedding of a (B, in_chans, S, S, S) crop."""
        return self.image_encoder(crop)

    def decode(self, embedding: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
               mask_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Low-resolution mask logits (B, 1, 4T, 4T, 4T).

        Args:
            embedding: ``encode``'s output for the crop.
            points: (B, N, 3) click voxels of the crop, in the crop tensor's axis order.
            labels: (B, N) 1 for object clicks, 0 for background clicks.
            mask_logits: (B, 1, 4T, 4T, 4T) the previous ``decode`` output, or None for no mask prompt.
        """
        sparse, dense = self.prompt_encoder(points, labels, mask_logits)
        logits, _ = self.mask_decoder(embedding, self.prompt_encoder.get_dense_pe(), sparse, dense)
        return logits

    def forward(self, crop: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                mask_logits: torch.Tensor | None = None) -> torch.Tensor:
        """``decode(encode(crop), points, labels, mask_logits)``."""
        return self.decode(self.encode(crop), points, labels, mask_logits)
