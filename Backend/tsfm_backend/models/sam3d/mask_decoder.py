"""The SAM-3D mask decoder: a SETR multi-level-aggregation head in 3D (3DSAM-adapter ``VIT_MLAHead_h``).

Each of the four encoder features (B, C, T, T, T) passes its own head (two 3x3x3 conv + instance norm
+ ReLU blocks, C -> ``channels``) and is upsampled to the decoder grid M = S / 2 (trilinear, corner
aligned). The four maps and the crop itself downsampled to M^3 (one channel: the fine detail the 4-voxel
tokens lack) are concatenated, classified by two 3x3x3 convolutions, and upsampled to the crop, S^3.

Only one feature depends on the clicks. The first classifier convolution has no bias and is linear in
its input channels, so it splits exactly into a part over the click-independent channels (the other
three levels and the crop), computed once per crop by ``static_partial``, and a part over the prompted
level's channels, added per click by ``classify_prompted``: a click then costs one of the five input
heads and a quarter of the first classifier convolution.
Convolutions have no bias and instance norms no affine, so the keys are ``mlahead.head{2..5}.{0,3}.weight``
and ``cls.{0,3}.weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_NAMES = ("head2", "head3", "head4", "head5")


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.InstanceNorm3d(out_channels),
        nn.ReLU(),
    ]


class MLAHead(nn.Module):
    """Four independent two-block conv heads, one per encoder feature level."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        for name in HEAD_NAMES:
            self.add_module(
                name, nn.Sequential(*_conv_block(in_channels, channels), *_conv_block(channels, channels))
            )

    def head(self, level: int) -> nn.Module:
        return getattr(self, HEAD_NAMES[level])


class MaskDecoder3D(nn.Module):
    """Four features + the downsampled crop -> (B, num_classes, S, S, S) logits, axes (A1, A2, A0).

    Args:
        in_channels: encoder feature width (the encoder's ``out_chans``).
        channels: width of each level head.
        num_classes: output channels (2: background, object).
    """

    def __init__(self, in_channels: int = 256, channels: int = 128, num_classes: int = 2) -> None:
        super().__init__()
        self.mlahead = MLAHead(in_channels, channels)
        self.cls = nn.Sequential(
            *_conv_block(4 * channels + 1, channels),
            nn.Conv3d(channels, num_classes, 3, padding=1, bias=False),
        )

    def head_maps(
        self, features: list[torch.Tensor], levels: range | list[int] = range(4)
    ) -> list[torch.Tensor]:
        """Head outputs (B, channels, T, T, T) of the given levels, before upsampling."""
        return [self.mlahead.head(level)(features[level]) for level in levels]

    def classify(self, heads: list[torch.Tensor], image_small: torch.Tensor, crop_size: int) -> torch.Tensor:
        """Logits (B, num_classes, S, S, S) from the four head outputs and the crop at the decoder grid.

        Args:
            heads: four (B, channels, T, T, T) head outputs, level order.
            image_small: (B, 1, M, M, M) crop channel 0 downsampled to the decoder grid, axes (A1, A2, A0).
            crop_size: S.
        """
        grid = image_small.shape[-1]
        upsampled = [F.interpolate(h, size=(grid,) * 3, mode="trilinear", align_corners=True) for h in heads]
        logits = self.cls(torch.cat([*upsampled, image_small.to(upsampled[0].dtype)], dim=1))
        return F.interpolate(logits, size=(crop_size,) * 3, mode="trilinear", align_corners=True)

    def _level_channels(self, level: int) -> slice:
        width = self.mlahead.head(0)[0].out_channels
        return slice(level * width, (level + 1) * width)

    def static_partial(
        self, features: list[torch.Tensor], prompted_level: int, image_small: torch.Tensor
    ) -> torch.Tensor:
        """First classifier convolution over every input channel except the prompted level's.

        Args:
            features: the four encoder features (the prompted one is not read).
            image_small: (B, 1, M, M, M) crop channel 0 at the decoder grid.
        Returns:
            (B, channels, M, M, M) pre-normalisation partial sum.
        """
        grid = image_small.shape[-1]
        levels = [level for level in range(4) if level != prompted_level]
        heads = [
            F.interpolate(h, size=(grid,) * 3, mode="trilinear", align_corners=True)
            for h in self.head_maps(features, levels)
        ]
        weight = self.cls[0].weight
        keep = torch.ones(weight.shape[1], dtype=torch.bool, device=weight.device)
        keep[self._level_channels(prompted_level)] = False
        inputs = torch.cat([*heads, image_small.to(heads[0].dtype)], dim=1)
        return F.conv3d(inputs, weight[:, keep], padding=1)

    def classify_prompted(
        self, partial: torch.Tensor, prompted: torch.Tensor, prompted_level: int, crop_size: int
    ) -> torch.Tensor:
        """Logits (B, num_classes, S, S, S), axes (A1, A2, A0), from ``static_partial`` and ``prompted``.

        Equals ``forward`` with ``prompted`` at ``prompted_level`` (up to float rounding).
        """
        grid = partial.shape[-1]
        head = self.mlahead.head(prompted_level)(prompted)
        head = F.interpolate(head, size=(grid,) * 3, mode="trilinear", align_corners=True)
        weight = self.cls[0].weight[:, self._level_channels(prompted_level)]
        logits = self.cls[1:](partial + F.conv3d(head, weight, padding=1))
        return F.interpolate(logits, size=(crop_size,) * 3, mode="trilinear", align_corners=True)

    def forward(
        self, features: list[torch.Tensor], image_small: torch.Tensor, crop_size: int
    ) -> torch.Tensor:
        """Logits (B, num_classes, S, S, S), axes (A1, A2, A0); see ``classify``."""
        return self.classify(self.head_maps(features), image_small, crop_size)
